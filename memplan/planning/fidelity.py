"""What a plan gives up against a reference recipe (by default the official Sa2VA recipe).

The fidelity score ranks plans in `memplan search` and the advice (1.0: the recipe as published).
It is a weighted sum of four terms, each in [0, 1], capped at the reference (more than the recipe
earns nothing):

| term | weight | score | why |
|---|---|---|---|
| SAM2 input resolution R | 0.45 | R / R_ref | mask detail scales with the side length the decoder sees (masks at R/4) |
| LoRA rank r of the LLM | 0.25 | log2(r) / log2(r_ref) | adapter capacity grows roughly with log rank (Hu et al. 2021 fig. 4: r 8-64 within noise) |
| SAM2 mask decoder trained | 0.25 | 1 trained, 0 frozen | the recipe fine-tunes it; Sa2VA's mask quality depends on it |
| micro-batch b | 0.05 | min(b, b_ref) / b_ref | with gradient accumulation the effective batch is kept; only the per-device batch differs |

Inference-only plans score 0 (nothing is trained). Tokens (tiles, text) are data, not knobs the
search varies; the advice reports them as what a change gives up, beside this score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memplan.estimate.context import build_context
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

WEIGHTS = {"resolution": 0.45, "lora_rank": 0.25, "decoder": 0.25, "micro_batch": 0.05}


def _rank(plan: Plan) -> int | None:
    llm = plan.components.llm
    return llm.lora.rank if llm.train == "lora" and llm.lora else None


def score_values(resolution: int, rank: int | None, *, decoder_trained: bool, micro_batch: int,
                 reference: Plan) -> float:
    """The score from the four knobs (the search calls this without building a Plan)."""
    ref_rank = _rank(reference)
    terms = {
        "resolution": min(resolution / reference.inputs.sam2_resolution, 1.0),
        "lora_rank": 1.0 if rank is None or ref_rank is None or ref_rank <= 1
        else min(math.log2(max(rank, 1)) / math.log2(ref_rank), 1.0),
        "decoder": 1.0 if decoder_trained or reference.components.sam2_decoder.train == "frozen" else 0.0,
        "micro_batch": min(micro_batch / reference.inputs.micro_batch, 1.0),
    }
    return round(sum(WEIGHTS[k] * v for k, v in terms.items()), 6)


def fidelity(plan: Plan, reference: Plan) -> float:
    """Fidelity of ``plan`` to ``reference`` in [0, 1] (see the module docstring)."""
    if plan.mode != "train":
        return 0.0
    return score_values(plan.inputs.sam2_resolution, _rank(plan),
                        decoder_trained=plan.components.sam2_decoder.train != "frozen",
                        micro_batch=plan.inputs.micro_batch, reference=reference)


@dataclass(frozen=True)
class GivesUp:
    """Differences from the reference that cost fidelity, as numbers and as short text."""

    resolution: tuple[int, int] | None  # (reference, plan) SAM2 input when lower
    trainable: tuple[int, int]  # (reference, plan) trainable parameters
    tokens: tuple[int, int] | None  # (reference, plan) LLM tokens per sample when fewer
    notes: tuple[str, ...]  # other differences (decoder frozen, no training, ...)

    def lines(self) -> list[str]:
        out = []
        if self.resolution:
            out.append(f"SAM2 {self.resolution[0]}->{self.resolution[1]} px")
        ref, got = self.trainable
        if got != ref and got:
            sign = "+" if got > ref else "-"
            out.append(f"trainable {sign}{_millions(abs(got - ref))} ({_millions(got)} vs {_millions(ref)})")
        if self.tokens:
            tiles = next((n for n in self.notes if n.startswith("tiles ")), None)
            out.append(f"{tiles + ' (' if tiles else ''}tokens {self.tokens[0]}->{self.tokens[1]}{')' if tiles else ''}")
        out.extend(n for n in self.notes if not (self.tokens and n.startswith("tiles ")))
        return out

    def text(self) -> str:
        return "; ".join(self.lines()) or "nothing"


def _millions(count: int) -> str:
    return f"{count / 1e6:,.1f}M" if count < 1e9 else f"{count / 1e9:,.3f}B"


def gives_up(profile: Profile, plan: Plan, reference: Plan) -> GivesUp:
    """What ``plan`` gives up against ``reference`` (resolution, trainable parameters, tokens,
    frozen parts, training itself), both on ``profile``."""
    ref_trainable = build_context(profile, reference).total_trainable
    trainable = build_context(profile, plan).total_trainable
    notes = []
    if plan.mode != "train":
        notes.append("no training (inference only)")
    else:
        for name in ("llm", "vision", "projector", "sam2_encoder", "sam2_decoder", "seg_head"):
            ours, theirs = getattr(plan.components, name), getattr(reference.components, name)
            if ours.train == "frozen" and theirs.train != "frozen":
                notes.append(f"{name.replace('_', ' ')} frozen")
        rank, ref_rank = _rank(plan), _rank(reference)
        if rank and ref_rank and rank < ref_rank:
            notes.append(f"LoRA r{ref_rank}->r{rank}")
        if plan.inputs.micro_batch < reference.inputs.micro_batch:
            notes.append(f"micro-batch {reference.inputs.micro_batch}->{plan.inputs.micro_batch}")
    resolution = None
    if plan.inputs.sam2_resolution < reference.inputs.sam2_resolution and plan.mode == "train":
        resolution = (reference.inputs.sam2_resolution, plan.inputs.sam2_resolution)
    tokens = None
    ref_tokens = reference.inputs.text_tokens
    if plan.inputs.text_tokens < ref_tokens or plan.inputs.tiles < reference.inputs.tiles:
        tokens = (ref_tokens, plan.inputs.text_tokens)
        if plan.inputs.tiles < reference.inputs.tiles:
            notes.append(f"tiles {reference.inputs.tiles}->{plan.inputs.tiles}")
    return GivesUp(resolution, (ref_trainable, trainable), tokens, tuple(notes))
