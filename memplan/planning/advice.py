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
from typing import Any, Callable

from memplan.estimate.peak import Estimate, estimate
from memplan.estimate import overhead
from memplan.estimate.overhead import Calibration
from memplan.planning.fidelity import fidelity
from memplan.spec.gpus import GpuSpec, gpu_for
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.planning.steptime import step_time
from memplan.spec.units import format_gib
from memplan.spec.vocabulary import Verdict

MIN_FITTING = 3
SMALL_BUCKET = 50_000_000  # elements: DeepSpeed's stage-3 prefetch default, 1/10 of its bucket default
RESOLUTION_STEPS = (768, 512)


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
        return self.estimate.verdict is Verdict.FITS and self.estimate.host_fits

    def line(self) -> str:
        return (f"{self.label}: needs {format_gib(self.estimate.needed_bytes)} GiB "
                f"(headroom {format_gib(self.estimate.headroom_bytes)}), {self.slowdown:.2f}x time per sample, "
                f"gives up {self.gives_up}")

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.label, "device_bytes": self.estimate.device_bytes,
                "needed_bytes": self.estimate.needed_bytes,
                "headroom_bytes": self.estimate.headroom_bytes, "host_bytes": self.estimate.host_bytes,
                "slowdown": round(self.slowdown, 4), "fidelity_loss": round(self.fidelity_loss, 4),
                "tokens_lost": self.tokens_lost, "gives_up": self.gives_up, "needs_hardware": self.needs_hardware}


@dataclass(frozen=True)
class Advice:
    estimate: Estimate
    diagnosis: list[str]
    changes: list[Change] = field(default_factory=list)  # the ones that fit
    tried: int = 0

    @property
    def fits(self) -> bool:
        return self.estimate.verdict is Verdict.FITS and self.estimate.host_fits

    def by_slowdown(self) -> list[Change]:
        return sorted(self.changes, key=lambda c: (c.slowdown, c.fidelity_loss, c.tokens_lost, c.needs_hardware))

    def by_sacrifice(self) -> list[Change]:
        return sorted(self.changes, key=lambda c: (c.fidelity_loss, c.tokens_lost, c.needs_hardware, c.slowdown))

    def top(self) -> Change | None:
        """The change that gives up least (then the fastest): the one-line advice."""
        ranked = self.by_sacrifice()
        return ranked[0] if ranked else None

    def to_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "diagnosis": self.diagnosis, "tried": self.tried,
                "by_slowdown": [c.to_dict() for c in self.by_slowdown()],
                "by_sacrifice": [c.to_dict() for c in self.by_sacrifice()]}


# ---------------------------------------------------------------- diagnosis
def phase_needed_bytes(result: Estimate) -> dict[str, int]:
    """What the card must hold at every phase's allocated peak, as the verdict sees the peak
    (overhead.needed_bytes; the device view where no pressure ratio is fitted)."""
    cal: Calibration = result.calibration
    out = {}
    for phase in result.phases:
        allocated = phase.total + cal.allocated_constant_bytes
        out[phase.phase.value] = overhead.card_views(cal, allocated, result.largest_block_bytes, result.num_gpus,
                                                     result.deepspeed, nccl_extra_bytes=result.nccl_extra_bytes)[2]
    return out


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
    if not result.host_fits:
        lines.append(f"host RAM over by {format_gib(result.host_bytes - result.host_ram_bytes)} GiB: "
                     f"{format_gib(result.host_bytes)} of {format_gib(result.host_ram_bytes)} GiB")
    return lines


# ---------------------------------------------------------------- candidate changes
Modifier = Callable[[Plan, Profile], "tuple[str, dict[str, Any], bool] | None"]


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply(plan: Plan, update: dict[str, Any]) -> Plan:
    """A validated copy of ``plan`` with a nested update merged in."""
    return Plan.model_validate(_merge(plan.model_dump(), update))


def _zero_up(plan: Plan, profile: Profile):
    engine = plan.engine
    if engine.kind == "pytorch":
        return "DeepSpeed ZeRO-1", {"engine": {"kind": "deepspeed", "zero_stage": 1}}, False
    if engine.zero_stage >= 3:
        return None
    return f"ZeRO-{engine.zero_stage + 1}", {"engine": {"zero_stage": engine.zero_stage + 1}}, False


def _optimizer_offload(plan: Plan, profile: Profile):
    if plan.mode != "train" or plan.engine.offload_optimizer != "none":
        return None
    stage = max(plan.engine.zero_stage, 1) if plan.engine.kind == "deepspeed" else 1
    label = "optimizer offload to CPU" + (f" (ZeRO-{stage})" if stage != plan.engine.zero_stage else "")
    return label, {"engine": {"kind": "deepspeed", "zero_stage": stage, "offload_optimizer": "cpu"}}, False


def _param_offload(plan: Plan, profile: Profile):
    if plan.engine.offload_params != "none":
        return None
    label = "parameter offload to CPU" + (" (ZeRO-3)" if plan.engine.zero_stage != 3 else "")
    return label, {"engine": {"kind": "deepspeed", "zero_stage": 3, "offload_params": "cpu"}}, False


def _checkpointing(plan: Plan, profile: Profile):
    if plan.mode != "train" or plan.components.llm.checkpointing or plan.components.llm.train == "frozen":
        return None
    return "LLM gradient checkpointing on", {"components": {"llm": {"checkpointing": True}}}, False


def _resolution(target: int) -> Modifier:
    def change(plan: Plan, profile: Profile):
        if plan.inputs.sam2_resolution <= target or profile.sam2 is None:
            return None
        return (f"SAM2 {plan.inputs.sam2_resolution}->{target}", {"inputs": {"sam2_resolution": target}}, False)
    change.__name__ = f"_resolution_{target}"
    return change


def _tokens_per_tile(profile: Profile) -> int:
    if profile.vision is None:
        return 0
    merge = profile.projector.merge_factor if profile.projector else 4
    return profile.vision.patches_per_tile // merge


def _fewer_tiles(plan: Plan, profile: Profile):
    tiles = plan.inputs.tiles
    if tiles <= 1 or profile.vision is None:
        return None
    fewer = (tiles - 1) // 2 + 1  # 12 + thumbnail -> 6 + thumbnail
    tokens = max(plan.inputs.text_tokens - (tiles - fewer) * _tokens_per_tile(profile), 1)
    return (f"tiles {tiles}->{fewer}", {"inputs": {"tiles": fewer, "text_tokens": tokens}}, False)


def _shorter_text(plan: Plan, profile: Profile):
    image = (plan.inputs.tiles + plan.inputs.frames) * _tokens_per_tile(profile)
    text = plan.inputs.text_tokens - image
    if text < 128:
        return None
    shorter = image + text // 2
    return (f"text {text}->{text // 2} tokens (sequence {plan.inputs.text_tokens}->{shorter})",
            {"inputs": {"text_tokens": shorter}}, False)


def _micro_batch(plan: Plan, profile: Profile):
    if plan.inputs.micro_batch <= 1:
        return None
    smaller = plan.inputs.micro_batch // 2
    return f"micro-batch {plan.inputs.micro_batch}->{smaller}", {"inputs": {"micro_batch": smaller}}, False


def _lora_rank(plan: Plan, profile: Profile):
    llm = plan.components.llm
    if plan.mode != "train" or llm.train != "lora" or llm.lora is None or llm.lora.rank < 16:
        return None
    rank = llm.lora.rank // 2
    return (f"LoRA r{llm.lora.rank}->r{rank}",
            {"components": {"llm": {"lora": {"rank": rank, "alpha": max(llm.lora.alpha // 2, 1)}}}}, False)


def _freeze_decoder(plan: Plan, profile: Profile):
    if plan.mode != "train" or plan.components.sam2_decoder.train == "frozen" or profile.sam2 is None:
        return None
    return "SAM2 mask decoder frozen", {"components": {"sam2_decoder": {"train": "frozen"}}}, False


def _buckets(plan: Plan, profile: Profile):
    engine = plan.engine
    if plan.mode != "train" or engine.kind != "deepspeed" or engine.zero_stage == 0:
        return None
    if engine.reduce_bucket_size <= SMALL_BUCKET and engine.allgather_bucket_size <= SMALL_BUCKET:
        return None
    return ("reduce/allgather buckets 5e7",
            {"engine": {"reduce_bucket_size": min(engine.reduce_bucket_size, SMALL_BUCKET),
                        "allgather_bucket_size": min(engine.allgather_bucket_size, SMALL_BUCKET)}}, False)


def _overlap_off(plan: Plan, profile: Profile):
    if plan.mode != "train" or plan.engine.kind != "deepspeed" or not plan.engine.overlap:
        return None
    return "overlap_comm off", {"engine": {"overlap_comm": False}}, False


def _more_gpus(plan: Plan, profile: Profile):
    n = plan.hardware.num_gpus
    return f"{2 * n} GPUs (was {n})", {"hardware": {"num_gpus": 2 * n}}, True


def _param_offload_off(plan: Plan, profile: Profile):
    """Only when host RAM overflows: parameters back on the GPU (ZeRO-3 keeps them sharded)."""
    if plan.engine.offload_params == "none":
        return None
    return "parameter offload off", {"engine": {"offload_params": "none"}}, False


def _optimizer_offload_off(plan: Plan, profile: Profile):
    """Only when host RAM overflows: optimizer state back on the GPU."""
    if plan.engine.offload_optimizer == "none":
        return None
    return "optimizer offload off", {"engine": {"offload_optimizer": "none", "offload_params": "none"}}, False


HOST_MODIFIERS: tuple[Modifier, ...] = (_param_offload_off, _optimizer_offload_off)

MODIFIERS: tuple[Modifier, ...] = (
    _zero_up, _optimizer_offload, _param_offload, _checkpointing, *(_resolution(r) for r in RESOLUTION_STEPS),
    _fewer_tiles, _shorter_text, _micro_batch, _lora_rank, _freeze_decoder, _buckets, _overlap_off, _more_gpus,
)


# ---------------------------------------------------------------- advice
def _evaluate(profile: Profile, original: Plan, label: str, plan: Plan, needs_hardware: bool,
              calibration: Calibration | None, base_seconds: float, base_fidelity: float, gpu: GpuSpec) -> Change:
    from memplan.planning.fidelity import gives_up

    result = estimate(profile, plan, calibration)
    seconds = step_time(profile, plan, gpu).per_sample
    lost = gives_up(profile, plan, original)
    tokens_lost = max(original.inputs.text_tokens - plan.inputs.text_tokens, 0)
    text = lost.text()
    if needs_hardware:
        text = f"needs {plan.hardware.num_gpus - original.hardware.num_gpus} more GPUs" + ("" if text == "nothing" else f"; {text}")
    return Change(label, plan, result, seconds, seconds / base_seconds if base_seconds else 1.0,
                  round(base_fidelity - fidelity(plan, original), 6), tokens_lost, text, needs_hardware)


def advise(profile: Profile, plan: Plan, calibration: Calibration | None = None,
           result: Estimate | None = None, *, pairs: bool = True) -> Advice:
    """Diagnose ``plan`` and, when it does not fit (GPU or host), find the changes that make it fit."""
    result = result or estimate(profile, plan, calibration)
    diagnosis = diagnose(result)
    if result.verdict is Verdict.FITS and result.host_fits:
        return Advice(result, diagnosis)
    gpu = gpu_for(plan.hardware.gpu, plan.hardware.vram_gib)
    base_seconds = step_time(profile, plan, gpu).per_sample
    base_fidelity = fidelity(plan, plan)
    modifiers = MODIFIERS + (HOST_MODIFIERS if not result.host_fits else ())
    singles: list[tuple[str, dict[str, Any], bool]] = []
    evaluated: list[Change] = []
    for modifier in modifiers:
        proposal = modifier(plan, profile)
        if proposal is None:
            continue
        label, update, hardware = proposal
        try:
            changed = apply(plan, update)
        except ValueError:  # outside what a plan allows (e.g. more than 1024 GPUs)
            continue
        singles.append(proposal)
        evaluated.append(_evaluate(profile, plan, label, changed, hardware, calibration, base_seconds, base_fidelity, gpu))
    tried = len(evaluated)
    fitting = [c for c in evaluated if c.fits]
    if pairs and len(fitting) < MIN_FITTING:
        software = [(s, c) for s, c in zip(singles, evaluated) if not s[2] and not c.fits]
        for (first, _), (second, _) in itertools.combinations(software, 2):
            if _conflict(first[0], second[0]):
                continue
            try:
                changed = apply(apply(plan, first[1]), second[1])
            except ValueError:
                continue
            label = f"{first[0]} + {second[0]}"
            change = _evaluate(profile, plan, label, changed, False, calibration, base_seconds, base_fidelity, gpu)
            tried += 1
            if change.fits:
                fitting.append(change)
    if not fitting:
        diagnosis.append(f"no single change{' or pair' if pairs else ''} of the {len(singles)} tried fits; "
                         f"`memplan search` explores combinations")
    return Advice(result, diagnosis, fitting, tried)


def _knob(label: str) -> str:
    if label.startswith("SAM2 ") and "->" in label:
        return "resolution"
    if label.startswith(("ZeRO-", "parameter offload", "DeepSpeed ZeRO")):
        return "zero stage"
    return label


def _conflict(first: str, second: str) -> bool:
    """Two changes of the same knob (two resolutions; ZeRO up and parameter offload's ZeRO-3)."""
    return _knob(first) == _knob(second)
