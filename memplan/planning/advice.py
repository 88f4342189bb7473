"""Advice for a plan that does not fit: where it overflows, and the cheapest changes that make it fit.

For an OOM estimate the diagnosis names the peak phase and moment, the largest term at that moment,
every phase whose device view exceeds the VRAM and by how much (or the host RAM overflow). Then each
candidate change below is applied to the plan and re-estimated; the ones that fit are kept and
ranked two ways, both shown:

- by estimated slowdown: per-sample step time (memplan/planning/steptime.py) against the original plan;
- by what they give up: fidelity to the original plan (memplan/planning/fidelity.py: SAM2 resolution, LoRA
  rank, decoder trained, micro-batch), then tokens per sample, then whether new hardware is needed.

Candidates: ZeRO stage up, optimizer offload, parameter offload, LLM checkpointing on, SAM2
resolution 1024 -> 768 -> 512, fewer tiles, shorter text, micro-batch down, LoRA rank down, SAM2
mask decoder frozen, smaller reduce/allgather buckets, overlap_comm off, twice the GPUs (and, when the
host RAM overflows, parameter or optimizer offload off). When fewer
than MIN_FITTING single changes fit, pairs of changes are tried (a pair is kept only when neither of
its changes fits alone).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from memplan.estimate.peak import Estimate, estimate, phase_needed_bytes
from memplan.planning.fidelity import fidelity, gives_up
from memplan.spec.calibration import Calibration
from memplan.spec.flags import deep_merge
from memplan.spec.gpus import GpuSpec, gpu_for
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.planning.steptime import step_time
from memplan.spec.units import format_gib
from memplan.spec.vocabulary import Verdict

MIN_FITTING = 3
SMALL_BUCKET = 50_000_000  # elements: DeepSpeed's stage-3 prefetch default, 1/10 of its bucket default
RESOLUTION_STEPS = (768, 512)
SETTLE_STEP = 64  # tokens: the grid of trace lengths Settle proposes (replay-f's families were scanned on it)
SETTLE_SPREAD = 0.125  # the second trace this share of the first's length shorter (two points fix each size law)


@dataclass(frozen=True)
class Change:
    """One candidate change (or a pair), re-estimated."""

    label: str
    plan: Plan
    estimate: Estimate
    seconds_per_sample: float
    slowdown: float  # per-sample step time / the original plan's
    fidelity_loss: float  # fidelity(original) - fidelity(changed), both against the original plan
    tokens_lost: int  # LLM tokens per sample given up
    gives_up: str
    needs_hardware: bool = False

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    def line(self) -> str:
        return (f"{self.label}: needs {format_gib(self.estimate.needed_bytes)} GiB "
                f"(headroom {format_gib(self.estimate.headroom_bytes)}), {self.slowdown:.2f}x time per sample, "
                f"gives up {self.gives_up}")

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.label, "device_bytes": self.estimate.device_bytes,
                "needed_bytes": self.estimate.needed_bytes,
                "headroom_bytes": self.estimate.headroom_bytes, "host_bytes": self.estimate.host_bytes,
                "tight": self.estimate.tight, "slowdown": round(self.slowdown, 4), "fidelity_loss": round(self.fidelity_loss, 4),
                "tokens_lost": self.tokens_lost, "gives_up": self.gives_up, "needs_hardware": self.needs_hardware}


@dataclass(frozen=True)
class Settle:
    """How to settle a TIGHT verdict with the card itself: run the same plan at two shorter sequence lengths
    that fit it clear of the tight band, tracing each (``memplan probe --text-len L --trace-out``), and replay
    the plan at its own length from those two traces (``memplan replay A B --text-len N``: the request sizes
    follow the length, docs/methodology.md 6c; memplan.planning.trace_family)."""

    trace_tokens: tuple[int, int]  # the two lengths to trace, shorter first
    text_tokens: int  # the plan's own length, to replay at
    card: str  # what --card takes: the plan's GPU name, else its VRAM in GiB

    def line(self) -> str:
        a, b = self.trace_tokens
        return (f"to settle it on this card: run the same plan with `memplan probe ... --text-len {a} --trace-out "
                f"a.json.gz` and `--text-len {b} --trace-out b.json.gz` (both fit clear of the band), then "
                f"`memplan replay a.json.gz b.json.gz --text-len {self.text_tokens} --card {self.card}` "
                "(or --longest for the longest length it trains)")

    def to_dict(self) -> dict[str, Any]:
        return {"trace_tokens": list(self.trace_tokens), "text_tokens": self.text_tokens, "card": self.card}


def _card_argument(plan: Plan) -> str:
    return plan.hardware.gpu or f"{plan.hardware.vram_gib:g}"


def settle(profile: Profile, plan: Plan, calibration: Calibration | None, *, result: Estimate,
           step: int = SETTLE_STEP) -> Settle | None:
    """For a plan inside the tight band: the longest length on a ``step`` grid below the plan's that the
    estimate fits clear of the band (bisection: what a plan needs grows with its length), and a second one
    SETTLE_SPREAD shorter; None when the plan is not tight or no two such lengths are above its image tokens."""
    if not result.tight:
        return None
    floor = (_image_tokens(plan, profile) // step + 1) * step  # the first grid length above the image tokens

    def clear(tokens: int) -> bool:
        return estimate(profile, apply(plan, {"inputs": {"text_tokens": tokens}}), calibration).clear_fit

    low, high = floor, (plan.inputs.text_tokens - 1) // step * step
    if high < low or not clear(low):
        return None
    while high - low > step:  # clear(low) holds; the answer is in [low, high]
        middle = (low + high) // 2 // step * step
        low, high = (middle, high) if clear(middle) else (low, middle)
    longest = high if clear(high) else low
    shorter = max(longest - max(step, round(longest * SETTLE_SPREAD / step) * step), floor)
    if shorter >= longest:
        return None
    return Settle((shorter, longest), plan.inputs.text_tokens, _card_argument(plan))


@dataclass(frozen=True)
class Advice:
    estimate: Estimate
    diagnosis: list[str]
    changes: list[Change] = field(default_factory=list)  # the ones that fit
    tried: int = 0
    settle: Settle | None = None  # a TIGHT plan: the two traces that settle it on the card

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    def by_slowdown(self) -> list[Change]:
        """Clear fits before tight ones (Estimate.tight), then the fastest."""
        return sorted(self.changes, key=lambda c: (c.estimate.tight, c.slowdown, c.fidelity_loss, c.tokens_lost,
                                                   c.needs_hardware))

    def by_sacrifice(self) -> list[Change]:
        """Clear fits before tight ones, then what gives up least."""
        return sorted(self.changes, key=lambda c: (c.estimate.tight, c.fidelity_loss, c.tokens_lost, c.needs_hardware,
                                                   c.slowdown))

    def top(self) -> Change | None:
        """The change that gives up least (then the fastest): the one-line advice."""
        ranked = self.by_sacrifice()
        return ranked[0] if ranked else None

    def to_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "diagnosis": self.diagnosis, "tried": self.tried,
                "settle": self.settle.to_dict() if self.settle else None,
                "by_slowdown": [c.to_dict() for c in self.by_slowdown()],
                "by_sacrifice": [c.to_dict() for c in self.by_sacrifice()]}


# ---------------------------------------------------------------- diagnosis
def diagnose(result: Estimate) -> list[str]:
    """Where the plan overflows: phase, moment, the largest terms, each phase over the VRAM, host RAM."""
    lines = []
    top = result.dominant(3)
    terms = ", ".join(f"{t.component.value} {t.category.value} {format_gib(t.bytes)} GiB" for t in top)
    if result.verdict is Verdict.OOM:
        lines.append(
            f"OOM by {format_gib(-result.headroom_bytes)} GiB at {result.peak_phase.value} ({result.peak.moment.label}): "
            f"needs {format_gib(result.needed_bytes)} GiB of {format_gib(result.vram_bytes)} GiB "
            f"(device view on a roomy card {format_gib(result.device_bytes)} GiB)")
        if top:
            lead = top[0]
            lines.append(f"largest term: {lead.component.value} {lead.category.value} {format_gib(lead.bytes)} GiB "
                         f"({lead.bytes / max(result.peak.total, 1):.0%} of the peak); next: "
                         + (", ".join(f"{t.component.value} {t.category.value} {format_gib(t.bytes)} GiB" for t in top[1:])
                            or "none"))
        over = [(name, bytes_ - result.vram_bytes) for name, bytes_ in phase_needed_bytes(result).items()
                if bytes_ > result.vram_bytes]
        if over:
            lines.append("phases over the VRAM: " + ", ".join(f"{n} +{format_gib(b)} GiB" for n, b in over))
    else:
        lines.append(f"fits on the GPU with {format_gib(result.headroom_bytes)} GiB to spare; peak at "
                     f"{result.peak_phase.value} ({result.peak.moment.label}): {terms}")
    if result.tight:
        lines.append(f"tight: needs {result.needed_bytes / result.vram_bytes:.1%} of the card, within the "
                     f"{result.tight_band:.1%} either side where runs predicted before they ran have "
                     f"gone either way; the changes below clear it")
    if not result.host_fits:
        lines.append(f"host RAM over by {format_gib(result.host_bytes - result.host_ram_bytes)} GiB: "
                     f"{format_gib(result.host_bytes)} of {format_gib(result.host_ram_bytes)} GiB")
    return lines


# ---------------------------------------------------------------- candidate changes
class Proposal(NamedTuple):
    """A candidate change: its label, the nested plan update, the knob it touches (two changes of
    one knob are never paired) and whether it needs new hardware."""

    label: str
    update: dict[str, Any]
    knob: str
    needs_hardware: bool = False


Modifier = Callable[[Plan, Profile], "Proposal | None"]
PLACEMENT = "parameter placement"  # ZeRO stage and parameter offload: where the parameters live


def apply(plan: Plan, update: dict[str, Any]) -> Plan:
    """A validated copy of ``plan`` with a nested update merged in."""
    return Plan.model_validate(deep_merge(plan.model_dump(), update))


def _zero_up(plan: Plan, profile: Profile):
    engine = plan.engine
    if engine.kind == "pytorch":
        return Proposal("DeepSpeed ZeRO-1", {"engine": {"kind": "deepspeed", "zero_stage": 1}}, PLACEMENT)
    if engine.zero_stage >= 3:
        return None
    return Proposal(f"ZeRO-{engine.zero_stage + 1}", {"engine": {"zero_stage": engine.zero_stage + 1}}, PLACEMENT)


def _optimizer_offload(plan: Plan, profile: Profile):
    if plan.mode != "train" or plan.engine.offload_optimizer != "none":
        return None
    stage = max(plan.engine.zero_stage, 1) if plan.engine.kind == "deepspeed" else 1
    label = "optimizer offload to CPU" + (f" (ZeRO-{stage})" if stage != plan.engine.zero_stage else "")
    return Proposal(label, {"engine": {"kind": "deepspeed", "zero_stage": stage, "offload_optimizer": "cpu"}},
                    "optimizer placement")


def _param_offload(plan: Plan, profile: Profile):
    if plan.engine.offload_params != "none":
        return None
    label = "parameter offload to CPU" + (" (ZeRO-3)" if plan.engine.zero_stage != 3 else "")
    return Proposal(label, {"engine": {"kind": "deepspeed", "zero_stage": 3, "offload_params": "cpu"}}, PLACEMENT)


def _checkpointing(plan: Plan, profile: Profile):
    if plan.mode != "train" or plan.components.llm.checkpointing or plan.components.llm.train == "frozen":
        return None
    return Proposal("LLM gradient checkpointing on", {"components": {"llm": {"checkpointing": True}}}, "llm checkpointing")


def _resolution(target: int) -> Modifier:
    def change(plan: Plan, profile: Profile):
        if plan.inputs.sam2_resolution <= target or profile.sam2 is None:
            return None
        return Proposal(f"SAM2 {plan.inputs.sam2_resolution}->{target}", {"inputs": {"sam2_resolution": target}},
                        "sam2 resolution")
    change.__name__ = f"_resolution_{target}"
    return change


def _fewer_tiles(plan: Plan, profile: Profile):
    tiles = plan.inputs.tiles
    if tiles <= 1 or profile.vision is None:
        return None
    fewer = (tiles - 1) // 2 + 1  # 12 + thumbnail -> 6 + thumbnail
    tokens = max(plan.inputs.text_tokens - (tiles - fewer) * profile.image_tokens_per_tile, 1)
    return Proposal(f"tiles {tiles}->{fewer}", {"inputs": {"tiles": fewer, "text_tokens": tokens}}, "tiles")


def _image_tokens(plan: Plan, profile: Profile) -> int:
    """The sequence's image tokens: (tiles + frames) x tokens per tile, 0 without a vision tower."""
    return (plan.inputs.tiles + plan.inputs.frames) * profile.image_tokens_per_tile if profile.vision else 0


def _shorter_text(plan: Plan, profile: Profile):
    image = _image_tokens(plan, profile)
    text = plan.inputs.text_tokens - image
    if text < 128:
        return None
    shorter = image + text // 2
    return Proposal(f"text {text}->{text // 2} tokens (sequence {plan.inputs.text_tokens}->{shorter})",
                    {"inputs": {"text_tokens": shorter}}, "text tokens")


def _micro_batch(plan: Plan, profile: Profile):
    if plan.inputs.micro_batch <= 1:
        return None
    smaller = plan.inputs.micro_batch // 2
    return Proposal(f"micro-batch {plan.inputs.micro_batch}->{smaller}", {"inputs": {"micro_batch": smaller}}, "micro-batch")


def _lora_rank(plan: Plan, profile: Profile):
    llm = plan.components.llm
    if plan.mode != "train" or llm.train != "lora" or llm.lora is None or llm.lora.rank < 16:
        return None
    rank = llm.lora.rank // 2
    return Proposal(f"LoRA r{llm.lora.rank}->r{rank}",
                    {"components": {"llm": {"lora": {"rank": rank, "alpha": max(llm.lora.alpha // 2, 1)}}}}, "lora rank")


def _freeze_decoder(plan: Plan, profile: Profile):
    if plan.mode != "train" or plan.components.sam2_decoder.train == "frozen" or profile.sam2 is None:
        return None
    return Proposal("SAM2 mask decoder frozen", {"components": {"sam2_decoder": {"train": "frozen"}}}, "sam2 decoder")


def _buckets(plan: Plan, profile: Profile):
    engine = plan.engine
    if plan.mode != "train" or engine.kind != "deepspeed" or engine.zero_stage == 0:
        return None
    if engine.reduce_bucket_size <= SMALL_BUCKET and engine.allgather_bucket_size <= SMALL_BUCKET:
        return None
    return Proposal("reduce/allgather buckets 5e7",
                    {"engine": {"reduce_bucket_size": min(engine.reduce_bucket_size, SMALL_BUCKET),
                                "allgather_bucket_size": min(engine.allgather_bucket_size, SMALL_BUCKET)}}, "buckets")


def _overlap_off(plan: Plan, profile: Profile):
    if plan.mode != "train" or plan.engine.kind != "deepspeed" or not plan.engine.overlap:
        return None
    return Proposal("overlap_comm off", {"engine": {"overlap_comm": False}}, "overlap_comm")


def _expandable_segments(plan: Plan, profile: Profile):
    """PyTorch's expandable segments: no fragmentation margin (memplan.estimate.overhead.needed_bytes);
    nothing of the training changes."""
    if plan.stack.allocator != "default":
        return None
    return Proposal("expandable segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)",
                    {"stack": {"allocator": "expandable_segments"}}, "allocator")


def _more_gpus(plan: Plan, profile: Profile):
    n = plan.hardware.num_gpus
    return Proposal(f"{2 * n} GPUs (was {n})", {"hardware": {"num_gpus": 2 * n}}, "num_gpus", needs_hardware=True)


def _param_offload_off(plan: Plan, profile: Profile):
    """Only when host RAM overflows: parameters back on the GPU (ZeRO-3 keeps them sharded)."""
    if plan.engine.offload_params == "none":
        return None
    return Proposal("parameter offload off", {"engine": {"offload_params": "none"}}, PLACEMENT)


def _optimizer_offload_off(plan: Plan, profile: Profile):
    """Only when host RAM overflows: optimizer state back on the GPU."""
    if plan.engine.offload_optimizer == "none":
        return None
    return Proposal("optimizer offload off", {"engine": {"offload_optimizer": "none", "offload_params": "none"}},
                    "optimizer placement")


HOST_MODIFIERS: tuple[Modifier, ...] = (_param_offload_off, _optimizer_offload_off)

MODIFIERS: tuple[Modifier, ...] = (
    _zero_up, _optimizer_offload, _param_offload, _checkpointing, *(_resolution(r) for r in RESOLUTION_STEPS),
    _fewer_tiles, _shorter_text, _micro_batch, _lora_rank, _freeze_decoder, _buckets, _overlap_off,
    _expandable_segments, _more_gpus,
)


# ---------------------------------------------------------------- advice
class _Base(NamedTuple):
    """The original plan's per-sample step time and fidelity, and the card it is timed on."""

    seconds: float
    fidelity: float
    gpu: GpuSpec


def _evaluate(profile: Profile, original: Plan, proposal: Proposal, *, plan: Plan, calibration: Calibration | None,
              base: _Base) -> Change:
    """``plan`` (``original`` with ``proposal`` applied) re-estimated, timed and scored against ``original``."""
    result = estimate(profile, plan, calibration)
    seconds = step_time(profile, plan, base.gpu).per_sample
    lost = gives_up(profile, plan, original)
    tokens_lost = max(original.inputs.text_tokens - plan.inputs.text_tokens, 0)
    text = lost.text()
    if proposal.needs_hardware:
        text = f"needs {plan.hardware.num_gpus - original.hardware.num_gpus} more GPUs" + ("" if text == "nothing" else f"; {text}")
    return Change(proposal.label, plan, result, seconds, seconds / base.seconds if base.seconds else 1.0,
                  round(base.fidelity - fidelity(plan, original), 6), tokens_lost, text, proposal.needs_hardware)


def advise(profile: Profile, plan: Plan, calibration: Calibration | None = None, *,
           result: Estimate | None = None, pairs: bool = True) -> Advice:
    """Diagnose ``plan`` and, when it does not fit (GPU or host) or fits only within the tight band
    (Estimate.tight), find the changes that make it fit; those that fit clear of the band rank first."""
    result = result or estimate(profile, plan, calibration)
    diagnosis = diagnose(result)
    if result.clear_fit:
        return Advice(result, diagnosis)
    gpu = gpu_for(plan.hardware.gpu, plan.hardware.vram_gib)
    base = _Base(step_time(profile, plan, gpu).per_sample, fidelity(plan, plan), gpu)
    modifiers = MODIFIERS + (HOST_MODIFIERS if not result.host_fits else ())
    singles: list[Proposal] = []
    evaluated: list[Change] = []
    for modifier in modifiers:
        proposal = modifier(plan, profile)
        if proposal is None:
            continue
        try:
            changed = apply(plan, proposal.update)
        except ValueError:  # outside what a plan allows (e.g. more than 1024 GPUs)
            continue
        singles.append(proposal)
        evaluated.append(_evaluate(profile, plan, proposal, plan=changed, calibration=calibration, base=base))
    tried = len(evaluated)
    fitting = [c for c in evaluated if c.fits]
    if pairs and sum(c.estimate.clear_fit for c in fitting) < MIN_FITTING:
        software = [(s, c) for s, c in zip(singles, evaluated) if not s.needs_hardware and not c.fits]
        for (first, _), (second, _) in itertools.combinations(software, 2):
            if first.knob == second.knob:  # two resolutions; ZeRO up and parameter offload's ZeRO-3
                continue
            try:
                changed = apply(apply(plan, first.update), second.update)
            except ValueError:
                continue
            pair = Proposal(f"{first.label} + {second.label}", {}, first.knob)
            change = _evaluate(profile, plan, pair, plan=changed, calibration=calibration, base=base)
            tried += 1
            if change.fits:
                fitting.append(change)
    if not fitting:
        diagnosis.append(f"no single change{' or pair' if pairs else ''} of the {len(singles)} tried fits; "
                         f"`memplan search` explores combinations")
    return Advice(result, diagnosis, fitting, tried, settle(profile, plan, calibration, result=result))
