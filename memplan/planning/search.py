"""Plan search: every combination of the memory knobs, the feasible ones, their Pareto front.

The space (``SearchSpace``; 25,920 candidates for a LoRA Sa2VA profile): ZeRO stage 0-3 x offload
none / optimizer / all (8 valid pairs: optimizer offload needs ZeRO >= 1, parameter offload ZeRO-3),
LLM checkpointing on/off, micro-batch 1/2/4, SAM2 resolution 512/768/1024, LoRA rank 16-256, SAM2
mask decoder trained or frozen, reduce and allgather bucket sizes 5e8/2e8/5e7 elements, overlap_comm
on/off. A candidate is feasible when what it needs on the card (Estimate.needed_bytes) fits the VRAM
and its host RAM fits the node.

The front is over (estimated time per sample, lower is better; fidelity to the base plan, higher is
better; memplan/planning/fidelity.py). Time per sample is the step time (memplan/planning/steptime.py) divided by the
micro-batch: gradient accumulation keeps the effective batch whatever the micro-batch.

Speed (>= 10,000 candidates in well under 2 s) comes from three facts, none of which skips a
candidate without deciding it:

1. Step time and fidelity are cheap: the FLOP count depends on 5 knobs (cached per combination),
   the engine's data movement is arithmetic. Every candidate gets both.
2. Sweeping the candidates from fastest to slowest, one that is not more faithful than the best
   feasible candidate found so far cannot join the front (a faster or equal feasible plan gives at
   least as much): it needs no memory estimate.
3. Memory is monotone in the knobs ordered by size (micro-batch, resolution, rank, decoder trained,
   buckets, overlap_comm) for a fixed (ZeRO stage, offload, checkpointing): a candidate at least as
   large as a known OOM one is OOM, one at most as large as a known fitting one fits.
   `tests/test_search.py` checks the front against a brute-force sweep that estimates everything.

Nested plan sections are built once per distinct value and combined with ``model_copy`` (no
re-validation per candidate).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from memplan.estimate.peak import Estimate, estimate
from memplan.spec.calibration import Calibration
from memplan.planning.fidelity import score_values
from memplan.planning.space import Knobs, SearchSpace
from memplan.spec.gpus import GpuSpec, gpu_for
from memplan.spec.plan import Engine, Hardware, LoRA, Optimizer, Plan
from memplan.spec.profile import Profile
from memplan.planning.steptime import StepTime, Workload, time_step, workload

# Step times within 2% of each other count as equal: the step-time model cannot rank them, so a
# front point is dropped when a more faithful feasible plan is at most 2% slower.
TIME_TOLERANCE = 0.02
OFFLOADS = {"none": ("none", "none"), "optimizer": ("cpu", "none"), "all": ("cpu", "cpu")}


@dataclass(frozen=True)
class Candidate:
    knobs: Knobs
    plan: Plan
    estimate: Estimate
    step: StepTime
    fidelity: float

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def seconds_per_sample(self) -> float:
        return self.step.per_sample


@dataclass
class SearchStats:
    candidates: int = 0  # enumerated and scored (step time, fidelity)
    estimated: int = 0  # full memory estimates
    proven_oom: int = 0  # at least as large as a known OOM candidate
    proven_fit: int = 0  # at most as large as a known fitting candidate
    dominated: int = 0  # cannot join the front: a faster feasible candidate is at least as faithful
    feasible: int | None = None  # known only for an exhaustive search
    seconds: float = 0.0


@dataclass(frozen=True)
class SearchResult:
    front: list[Candidate]  # Pareto front, fastest first
    stats: SearchStats
    base_plan: Plan
    gpu: GpuSpec
    smallest: Candidate | None = None  # the smallest achievable peak (set when nothing fits)
    feasible: list[Candidate] = field(default_factory=list)  # every feasible one (exhaustive only)

    @property
    def fits(self) -> bool:
        return bool(self.front)


# ---------------------------------------------------------------- building blocks


def _dominates(small: tuple, large: tuple) -> bool:
    return all(a <= b for a, b in zip(small, large))


class _Lattice:
    """Known OOM (minimal) and fitting (maximal) points of one (stage, offload, checkpointing) group."""

    __slots__ = ("oom", "fit")

    def __init__(self) -> None:
        self.oom: list[tuple] = []
        self.fit: list[tuple] = []

    def known(self, point: tuple) -> bool | None:
        for bad in self.oom:
            if _dominates(bad, point):
                return False
        for good in self.fit:
            if _dominates(point, good):
                return True
        return None

    def add(self, point: tuple, fits: bool) -> None:
        if fits:
            self.fit = [g for g in self.fit if not _dominates(g, point)] + [point]
        else:
            self.oom = [b for b in self.oom if not _dominates(point, b)] + [point]


class _Builder:
    """Plans for candidates: nested sections built (validated) once per distinct value."""

    def __init__(self, profile: Profile, base: Plan, *, hardware: Hardware, space: SearchSpace):
        self.profile, self.base, self.space = profile, base, space
        self.hardware = hardware
        self._engines: dict[tuple, Engine] = {}
        self._components: dict[tuple, Any] = {}
        self._inputs: dict[tuple, Any] = {}
        self._workloads: dict[tuple, Workload] = {}
        self._plans_for_work: dict[tuple, Plan] = {}
        base_opt = base.optimizer
        self._opt_plain = Optimizer(kind="adamw", foreach=base_opt.foreach) if base_opt.kind == "cpu_adam" else base_opt
        self._opt_offload = base_opt

    def engine(self, zero: int, offload: str, *, reduce: int, allgather: int, overlap: bool) -> Engine:
        key = (zero, offload, reduce, allgather, overlap)
        engine = self._engines.get(key)
        if engine is None:
            optimizer_device, param_device = OFFLOADS[offload]
            fields = self.base.engine.model_dump()
            fields.update(kind="deepspeed", zero_stage=zero, offload_optimizer=optimizer_device,
                          offload_params=param_device, reduce_bucket_size=reduce,
                          allgather_bucket_size=allgather, overlap_comm=overlap)
            engine = self._engines[key] = Engine.model_validate(fields)
        return engine

    def components(self, rank: int | None, decoder: bool, checkpointing: bool):
        key = (rank, decoder, checkpointing)
        parts = self._components.get(key)
        if parts is None:
            base = self.base.components
            llm = base.llm.model_copy(update={"checkpointing": checkpointing})
            if rank is not None and base.llm.lora is not None:
                scale = base.llm.lora.alpha / base.llm.lora.rank
                lora = LoRA.model_validate({**base.llm.lora.model_dump(), "rank": rank, "alpha": max(int(rank * scale), 1)})
                llm = llm.model_copy(update={"lora": lora})
            decoder_plan = base.sam2_decoder.model_copy(update={"train": "full" if decoder else "frozen"})
            parts = self._components[key] = base.model_copy(update={"llm": llm, "sam2_decoder": decoder_plan})
        return parts

    def inputs(self, micro_batch: int, resolution: int):
        key = (micro_batch, resolution)
        inputs = self._inputs.get(key)
        if inputs is None:
            inputs = self._inputs[key] = self.base.inputs.model_copy(
                update={"micro_batch": micro_batch, "sam2_resolution": resolution})
        return inputs

    def plan(self, knobs: Knobs) -> Plan:
        engine = self.engine(knobs.zero_stage, knobs.offload, reduce=knobs.reduce_bucket_size,
                             allgather=knobs.allgather_bucket_size, overlap=knobs.overlap_comm)
        optimizer = self._opt_offload if engine.offload_optimizer != "none" else self._opt_plain
        return self.base.model_copy(update={
            "name": knobs.name(), "description": knobs.describe(), "hardware": self.hardware, "engine": engine, "optimizer": optimizer,
            "components": self.components(knobs.lora_rank, knobs.decoder_trained, knobs.checkpointing),
            "inputs": self.inputs(knobs.micro_batch, knobs.sam2_resolution),
        })

    def workload(self, micro_batch: int, resolution: int, *, rank: int | None, decoder: bool,
                 checkpointing: bool) -> Workload:
        key = (micro_batch, resolution, rank, decoder, checkpointing)
        work = self._workloads.get(key)
        if work is None:
            plan = self.base.model_copy(update={
                "hardware": self.hardware, "components": self.components(rank, decoder, checkpointing),
                "inputs": self.inputs(micro_batch, resolution)})
            work = self._workloads[key] = workload(self.profile, plan)
        return work


def _ranks(profile: Profile, base: Plan, space: SearchSpace) -> tuple[int | None, ...]:
    llm = base.components.llm
    if llm.train != "lora" or profile.llm is None:
        return (None,)
    narrowest = min(min(d_in, d_out) for _, d_in, d_out in profile.llm.linear_shapes())
    ranks = tuple(r for r in space.lora_rank if r <= narrowest)
    return ranks or (min(space.lora_rank[0], narrowest),)


def _resolutions(profile: Profile, base: Plan, space: SearchSpace) -> tuple[int, ...]:
    return space.sam2_resolution if profile.sam2 is not None else (base.inputs.sam2_resolution,)


def _decoders(profile: Profile, base: Plan, space: SearchSpace) -> tuple[bool, ...]:
    return space.decoder_trained if profile.sam2 is not None else (base.components.sam2_decoder.train != "frozen",)


# ---------------------------------------------------------------- search
def search(
    profile: Profile,
    base_plan: Plan,
    *,
    num_gpus: int,
    vram_gib: float,
    host_ram_gib: float | None = None,
    gpu: GpuSpec | None = None,
    space: SearchSpace | None = None,
    calibration: Calibration | None = None,
    exhaustive: bool = False,
    allow_tight: bool = False,
) -> SearchResult:
    """Enumerate ``space`` around ``base_plan`` on ``num_gpus`` x ``vram_gib``; return the feasible
    Pareto front over (time per sample, fidelity to ``base_plan``), fastest first.

    Feasible means it fits clear of the tight band (Estimate.clear_fit: needed at most (1 - tight_band) x
    VRAM, where pre-registered verdicts have not gone the other way); ``allow_tight`` counts any fit.
    Both are monotone in the knobs, as the lattice's pruning needs. ``exhaustive`` decides feasibility of
    every candidate (slower) and returns them all in ``SearchResult.feasible``; the front is the same.
    """
    started = time.perf_counter()
    space = space or SearchSpace()
    step_terms = calibration.step_time if calibration is not None else None  # None: the shipped fit
    hardware = base_plan.hardware.model_copy(update={
        "num_gpus": num_gpus, "vram_gib": vram_gib,
        "host_ram_gib": host_ram_gib if host_ram_gib is not None else base_plan.hardware.host_ram_gib,
        "gpu": gpu.name if gpu else base_plan.hardware.gpu})
    gpu = gpu or gpu_for(hardware.gpu, vram_gib)
    base = base_plan.model_copy(update={"mode": "train", "hardware": hardware})
    builder = _Builder(profile, base, hardware=hardware, space=space)

    ranks = _ranks(profile, base, space)
    resolutions = _resolutions(profile, base, space)
    decoders = _decoders(profile, base, space)
    memory_axes = (space.micro_batch, resolutions, ranks, decoders, space.reduce_bucket_size,
                   space.allgather_bucket_size, space.overlap_comm)

    # 1. score every candidate: (seconds per sample, -fidelity, group, memory point)
    fidelity_cache: dict[tuple, float] = {}
    scored: list[tuple[float, float, int, tuple]] = []
    groups: list[tuple[int, str, bool]] = []
    for zero, offload in space.zero_offload:
        for checkpointing in space.checkpointing:
            group = len(groups)
            groups.append((zero, offload, checkpointing))
            engines = {}
            for point in itertools.product(*(range(len(axis)) for axis in memory_axes)):
                mb, res, rank, dec, rb, ab, ov = (axis[i] for axis, i in zip(memory_axes, point))
                engine = engines.get((rb, ab, ov))
                if engine is None:
                    engine = engines[(rb, ab, ov)] = builder.engine(zero, offload, reduce=rb, allgather=ab, overlap=ov)
                work = builder.workload(mb, res, rank=rank, decoder=dec, checkpointing=checkpointing)
                seconds = time_step(work, engine, num_gpus=num_gpus, gpu=gpu, terms=step_terms).per_sample
                key = (res, rank, dec, mb)
                score = fidelity_cache.get(key)
                if score is None:
                    score = fidelity_cache[key] = score_values(res, rank, decoder_trained=dec, micro_batch=mb, reference=base)
                scored.append((seconds, -score, group, point))
    stats = SearchStats(candidates=len(scored))
    scored.sort()

    lattices = [_Lattice() for _ in groups]
    estimates: dict[tuple, Estimate] = {}

    def knobs_of(group: int, point: tuple) -> Knobs:
        zero, offload, checkpointing = groups[group]
        mb, res, rank, dec, rb, ab, ov = (axis[i] for axis, i in zip(memory_axes, point))
        return Knobs(zero, offload, checkpointing, mb, res, rank, dec, rb, ab, ov)

    def fits(group: int, point: tuple) -> bool:
        known = lattices[group].known(point)
        if known is not None:
            if known:
                stats.proven_fit += 1
            else:
                stats.proven_oom += 1
            return known
        result = estimate(profile, builder.plan(knobs_of(group, point)), calibration)
        stats.estimated += 1
        estimates[(group, point)] = result
        ok = result.fits if allow_tight else result.clear_fit
        lattices[group].add(point, ok)
        return ok

    # 2. sweep fastest first; only a more faithful candidate can join the front
    front_entries: list[tuple[float, float, int, tuple]] = []
    feasible_keys: list[tuple[int, tuple]] = []
    best = -1.0
    for seconds, negative_score, group, point in scored:
        score = -negative_score
        if score <= best and not exhaustive:
            stats.dominated += 1
            continue
        if fits(group, point):
            feasible_keys.append((group, point))
            if score > best:
                front_entries.append((seconds, score, group, point))
                best = score
    front_keys = [(g, p) for _, _, g, p in thin_front(front_entries)]
    if exhaustive:
        stats.feasible = len(feasible_keys)

    def candidate(group: int, point: tuple) -> Candidate:
        knobs = knobs_of(group, point)
        plan = builder.plan(knobs)
        result = estimates.get((group, point)) or estimate(profile, plan, calibration)
        work = builder.workload(knobs.micro_batch, knobs.sam2_resolution, rank=knobs.lora_rank,
                                decoder=knobs.decoder_trained, checkpointing=knobs.checkpointing)
        step = time_step(work, plan.engine, num_gpus=num_gpus, gpu=gpu, terms=step_terms)
        score = fidelity_cache[(knobs.sam2_resolution, knobs.lora_rank, knobs.decoder_trained, knobs.micro_batch)]
        return Candidate(knobs, plan, result, step, score)

    front = [candidate(g, p) for g, p in front_keys]
    smallest = None
    if not front:  # the bottom of every group's lattice is its smallest peak
        bottoms = [candidate(g, tuple(0 for _ in memory_axes)) for g in range(len(groups))]
        smallest = min(bottoms, key=lambda c: (c.estimate.needed_bytes, c.estimate.host_bytes))
    feasible = [candidate(g, p) for g, p in feasible_keys] if exhaustive else []
    stats.seconds = time.perf_counter() - started
    return SearchResult(front, stats, base, gpu, smallest, feasible)


def thin_front(entries: list[tuple]) -> list[tuple]:
    """Drop front points (seconds, score, ...) that a more faithful point beats within TIME_TOLERANCE."""
    return [entry for i, entry in enumerate(entries)
            if not any(later[0] <= entry[0] * (1 + TIME_TOLERANCE) for later in entries[i + 1:])]


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The (thinned) Pareto front of feasible candidates by brute force, fastest first (for tests)."""
    ordered = sorted(candidates, key=lambda c: (c.seconds_per_sample, -c.fidelity))
    entries, best = [], -1.0
    for c in ordered:
        if c.fidelity > best:
            entries.append((c.seconds_per_sample, c.fidelity, c))
            best = c.fidelity
    return [entry[2] for entry in thin_front(entries)]
