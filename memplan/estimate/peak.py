"""The estimate: per-GPU peak by phase, what dominates it, the device and host views, a verdict.

    profile + plan -> Context -> estimators (per category) -> phases -> Estimate -> reports
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from memplan.estimate import activations, fsdp, gradients, multinode, optimizer, overhead, weights
from memplan.estimate.card import calibration_for_card
from memplan.estimate.context import Context, build_context
from memplan.estimate.overhead import Calibration
from memplan.estimate.phases import PhaseMemory, Term, all_phases
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.cards import card_capacity_bytes
from memplan.spec.units import gib_to_bytes
from memplan.spec.vocabulary import Category, Component, Phase, Verdict


@dataclass(frozen=True)
class Estimate:
    profile_name: str
    plan_name: str
    num_gpus: int
    vram_bytes: int
    host_ram_bytes: int
    phases: tuple[PhaseMemory, ...]
    peak: PhaseMemory
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_bytes: int
    host_bytes: int
    calibration: Calibration = field(repr=False)
    needed_bytes: int = 0  # what the card must hold not to run out (overhead.needed_bytes)
    largest_block_bytes: int = 0  # the largest single tensor (activations.largest_block_bytes)
    deepspeed: bool = False  # engine.kind deepspeed or fsdp2 (a NCCL communicator even on one GPU)
    nodes: int = 1
    host_pinned_bytes: int = 0  # pinned share of host_bytes (FSDP2 CPUOffloadPolicy), per node
    nccl_extra_bytes: int = 0  # further communicators and inter-node buffers (multinode.nccl_extra_bytes)
    context_source: str = ""  # which card family's context the device views use (memplan.estimate.card)
    expandable_segments: bool = False  # stack.allocator expandable_segments: needed_bytes without fragmentation

    @property
    def headroom_bytes(self) -> int:
        return self.vram_bytes - self.needed_bytes

    @property
    def verdict(self) -> Verdict:
        """FITS when what the run needs on the device (allocated plus the fragmentation the allocator
        cannot give back, context, NCCL) fits the VRAM."""
        return Verdict.FITS if self.needed_bytes <= self.vram_bytes else Verdict.OOM

    @property
    def allocator(self) -> str:
        """The plan's stack.allocator: expandable_segments or default."""
        return "expandable_segments" if self.expandable_segments else "default"

    @property
    def tight_band(self) -> float:
        """The share of the card either side of it where pre-registered verdicts under this plan's allocator
        have gone either way (Calibration.band_for: 5.5% under the default allocator, whose fragmentation
        decides there; narrower under expandable segments, which leave almost nothing stranded)."""
        return self.calibration.band_for(self.allocator)

    @property
    def tight(self) -> bool:
        """|needed - VRAM| <= tight_band x VRAM: too close to the card to call."""
        return abs(self.needed_bytes - self.vram_bytes) <= self.tight_band * self.vram_bytes

    @property
    def clear_fit(self) -> bool:
        """Fits, and by more than the tight band: a plan to bet a run on."""
        return self.fits and not self.tight

    @property
    def host_fits(self) -> bool:
        return self.host_bytes <= self.host_ram_bytes

    @property
    def fits(self) -> bool:
        """The plan fits: on the card (verdict FITS) and in the node's host RAM."""
        return self.verdict is Verdict.FITS and self.host_fits

    @property
    def peak_phase(self) -> Phase:
        return self.peak.phase

    def breakdown(self) -> list[Term]:
        """The terms of the peak moment, merged per (component, category), largest first."""
        merged: dict[tuple[Component, Category], int] = defaultdict(int)
        for term in self.peak.moment.terms:
            merged[(term.component, term.category)] += term.bytes
        terms = [Term(c, k, b) for (c, k), b in merged.items() if b]
        return sorted(terms, key=lambda t: -t.bytes)

    def dominant(self, count: int = 3) -> list[Term]:
        return self.breakdown()[:count]

    def to_dict(self) -> dict:
        """The JSON contract: bytes as integers under documented keys."""
        return {
            "model": self.profile_name,
            "plan": self.plan_name,
            "verdict": self.verdict.value,
            "tight": self.tight,
            "tight_band": self.tight_band,
            "num_gpus": self.num_gpus,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "device_bytes": self.device_bytes,
            "needed_bytes": self.needed_bytes,
            "host_bytes": self.host_bytes,
            "host_ram_bytes": self.host_ram_bytes,
            "vram_bytes": self.vram_bytes,
            "headroom_bytes": self.headroom_bytes,
            "peak_phase": self.peak_phase.value,
            "peak_moment": self.peak.moment.label,
            "phases": {p.phase.value: p.total for p in self.phases},
            "breakdown": [
                {"component": t.component.value, "category": t.category.value, "bytes": t.bytes}
                for t in self.breakdown()
            ],
            **self._per_node(),
            **({"context_source": self.context_source} if self.context_source else {}),
            **({"allocator": "expandable_segments"} if self.expandable_segments else {}),
        }

    def _per_node(self) -> dict:
        """Present for plans on several nodes or with pinned host memory: host_bytes is per node."""
        if self.nodes == 1 and not self.host_pinned_bytes:
            return {}
        return {"per_node": {"nodes": self.nodes, "gpus_per_node": self.num_gpus // self.nodes,
                             "host_bytes": self.host_bytes, "host_pinned_bytes": self.host_pinned_bytes}}


def phase_needed_bytes(result: Estimate) -> dict[str, int]:
    """What the card must hold at every phase's allocated peak, as the verdict sees the peak
    (overhead.needed_bytes; the device view where no pressure ratio is fitted)."""
    cal: Calibration = result.calibration
    out = {}
    for phase in result.phases:
        allocated = phase.total + cal.allocated_constant_bytes
        out[phase.phase.value] = overhead.card_views(cal, allocated, result.largest_block_bytes,
                                                     num_gpus=result.num_gpus, is_deepspeed=result.deepspeed,
                                                     nccl_extra_bytes=result.nccl_extra_bytes,
                                                     expandable=result.expandable_segments)[2]
    return out


def category_bytes(result: Estimate) -> dict[Category, int]:
    """Bytes per Category, each at its largest over the phases' peak moments: what a census of the
    live tensors taken at every phase (max over steps) sees (memplan.probe.census)."""
    out: dict[Category, int] = {}
    for phase in result.phases:
        sums: dict[Category, int] = defaultdict(int)
        for term in phase.moment.terms:
            sums[term.category] += term.bytes
        for category, value in sums.items():
            out[category] = max(out.get(category, 0), value)
    return out


def host_bytes(ctx: Context, calibration: Calibration) -> int:
    """Host RAM of one node: one process per GPU of the node (base RSS each) plus the node's share of
    offloaded optimizer state, fp32 masters and gradients, and offloaded parameters (ZeRO-Offload,
    arXiv 2101.06840; each rank holds its 1/N partition, so a node holds 1/nodes of the whole), or
    its ranks' FSDP2 CPUOffloadPolicy shards."""
    per_node = ctx.plan.hardware.gpus_per_node
    if ctx.is_fsdp:
        state = optimizer.state_bytes_per_param(ctx, Component.LLM) if ctx.training else 0
        return per_node * (calibration.host_base_bytes + fsdp.host_bytes_per_rank(ctx, state))
    offloaded = optimizer.host_optimizer_bytes(ctx) + gradients.host_gradient_bytes(ctx) + weights.host_weight_bytes(ctx)
    return per_node * calibration.host_base_bytes + multinode.share_per_node(ctx, offloaded)


def estimate(profile: Profile, plan: Plan, calibration: Calibration | None = None) -> Estimate:
    """Pure: the same (profile, plan, calibration) always gives the same Estimate."""
    calibration = calibration or overhead.DEFAULT
    context_source = ""
    if plan.hardware.gpu:  # the named card's family context (memplan.estimate.card)
        calibration, context_source = calibration_for_card(calibration, plan.hardware.gpu)
    ctx = build_context(profile, plan)
    phases = tuple(all_phases(ctx))
    peak = max(phases, key=lambda p: p.total)
    allocated = peak.total + calibration.allocated_constant_bytes
    deepspeed = plan.engine.kind in ("deepspeed", "fsdp2")  # a process group even on one GPU
    block = activations.largest_block_bytes(ctx)
    nccl_extra = multinode.nccl_extra_bytes(ctx, calibration)
    expandable = plan.stack.allocator == "expandable_segments"
    reserved, device, needed = overhead.card_views(calibration, allocated, block, num_gpus=plan.hardware.num_gpus,
                                                   is_deepspeed=deepspeed, nccl_extra_bytes=nccl_extra,
                                                   expandable=expandable)
    return Estimate(
        profile_name=profile.name,
        plan_name=plan.name,
        num_gpus=plan.hardware.num_gpus,
        vram_bytes=card_capacity_bytes(gpu=plan.hardware.gpu, vram_gib=plan.hardware.vram_gib),
        host_ram_bytes=gib_to_bytes(plan.hardware.host_ram_gib),
        phases=phases,
        peak=peak,
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        device_bytes=device,
        host_bytes=host_bytes(ctx, calibration),
        calibration=calibration,
        needed_bytes=needed,
        largest_block_bytes=block,
        deepspeed=deepspeed,
        nodes=plan.hardware.nodes,
        host_pinned_bytes=plan.hardware.gpus_per_node * fsdp.pinned_bytes_per_rank(ctx) if ctx.is_fsdp else 0,
        nccl_extra_bytes=nccl_extra,
        context_source=context_source,
        expandable_segments=expandable,
    )

