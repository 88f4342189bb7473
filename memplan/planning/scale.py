"""Search across engines and node counts: every engine choice on 1-64 nodes, estimated per rank.

Engine choices (``ENGINE_CHOICES``): DeepSpeed ZeRO-1/2 with and without optimizer offload, ZeRO-3
without offload, with optimizer offload and with parameter offload; PyTorch FSDP2 with and without
CPUOffloadPolicy, and HSDP (shard within a node, replicate across nodes) with and without it. Node
counts: powers of two up to ``max_nodes``, each of ``gpus_per_node`` GPUs. Each cell is one estimate
of the base plan with that engine and hardware (77 estimates for 11 choices x 7 node counts: a few
milliseconds each), with its step time per sample.

Step time: memplan.planning.steptime has no FSDP2 term; FSDP2 is timed as ZeRO-3 with the same
offload (the same collectives per step: an all-gather of every unit in forward and in backward, a
reduce-scatter of the gradients; torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py), over the
shard group (one node's GPUs under HSDP).
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.estimate.peak import Estimate, estimate
from memplan.planning.steptime import StepTime, time_step, workload
from memplan.spec.calibration import Calibration
from memplan.spec.gpus import GpuSpec, gpu_for
from memplan.spec.plan import Engine, Fsdp, Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Verdict

ENGINE_CHOICES: dict[str, dict] = {
    "zero1": {"kind": "deepspeed", "zero_stage": 1},
    "zero1+opt-offload": {"kind": "deepspeed", "zero_stage": 1, "offload_optimizer": "cpu"},
    "zero2": {"kind": "deepspeed", "zero_stage": 2},
    "zero2+opt-offload": {"kind": "deepspeed", "zero_stage": 2, "offload_optimizer": "cpu"},
    "zero3": {"kind": "deepspeed", "zero_stage": 3},
    "zero3+opt-offload": {"kind": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu"},
    "zero3+offload": {"kind": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"},
    "fsdp2": {"kind": "fsdp2", "fsdp": {}},
    "fsdp2+offload": {"kind": "fsdp2", "fsdp": {"offload": True}},
    "hsdp": {"kind": "fsdp2", "fsdp": {"hsdp": True}},
    "hsdp+offload": {"kind": "fsdp2", "fsdp": {"hsdp": True, "offload": True}},
}


@dataclass(frozen=True)
class Cell:
    """One engine choice on one node count."""

    choice: str
    nodes: int
    plan: Plan
    estimate: Estimate
    step: StepTime

    @property
    def fits(self) -> bool:
        return self.estimate.verdict is Verdict.FITS and self.estimate.host_fits

    def to_dict(self) -> dict:
        e = self.estimate
        return {"engine": self.choice, "nodes": self.nodes, "num_gpus": self.plan.hardware.num_gpus,
                "fits": self.fits, "verdict": e.verdict.value, "needed_bytes": e.needed_bytes,
                "peak_allocated_bytes": e.peak_allocated_bytes, "host_bytes_per_node": e.host_bytes,
                "host_pinned_bytes_per_node": e.host_pinned_bytes, "seconds_per_sample": round(self.step.per_sample, 6)}


def node_counts(max_nodes: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to max_nodes (max_nodes itself included)."""
    counts, n = [], 1
    while n < max_nodes:
        counts.append(n)
        n *= 2
    return (*counts, max_nodes)


def engine_for(base: Engine, choice: str) -> Engine:
    """The base engine's knobs with the choice's kind, stage and offload (FSDP2: its own section)."""
    fields = dict(ENGINE_CHOICES[choice])
    if fields["kind"] == "fsdp2":
        fsdp = base.fsdp.model_dump() if base.fsdp is not None else Fsdp().model_dump()
        return Engine.model_validate({"kind": "fsdp2", "fsdp": {**fsdp, **fields["fsdp"]}})
    kept = base.model_dump(exclude={"fsdp"}) if base.kind == "deepspeed" else {}
    return Engine.model_validate({**kept, "offload_optimizer": "none", "offload_params": "none",
                                  "zero_hpz_partition_size": 1, **fields})


def timed_engine(engine: Engine) -> Engine:
    """What steptime.time_step can time: FSDP2 as ZeRO-3 with the same offload."""
    if engine.kind != "fsdp2":
        return engine
    offload = "cpu" if engine.fsdp.offload else "none"
    return Engine(kind="deepspeed", zero_stage=3, offload_optimizer=offload, offload_params=offload)


def plan_for(base: Plan, choice: str, *, nodes: int, gpus_per_node: int, vram_gib: float) -> Plan:
    hardware = base.hardware.model_copy(update={"nodes": nodes, "num_gpus": nodes * gpus_per_node, "vram_gib": vram_gib})
    engine = engine_for(base.engine, choice)
    optimizer = base.optimizer
    if optimizer.kind in ("fused_adam", "cpu_adam") and (engine.kind != "deepspeed" or engine.offload_optimizer == "none"):
        optimizer = optimizer.model_copy(update={"kind": "adamw"})
    return base.model_copy(update={"name": f"{choice}-{nodes}x{gpus_per_node}", "hardware": hardware,
                                   "engine": engine, "optimizer": optimizer,
                                   "description": f"{choice} on {nodes} node(s) x {gpus_per_node} GPUs"})


def sweep(profile: Profile, base: Plan, *, gpus_per_node: int, vram_gib: float, max_nodes: int = 64,
          choices: tuple[str, ...] = tuple(ENGINE_CHOICES), gpu: GpuSpec | None = None,
          calibration: Calibration | None = None) -> list[Cell]:
    """Every (engine choice, node count) of the base plan; HSDP only on more than one node."""
    gpu = gpu or gpu_for(base.hardware.gpu, vram_gib)
    base = base.model_copy(update={"mode": "train"})
    work = workload(profile, base)
    cells = []
    for choice in choices:
        for nodes in node_counts(max_nodes):
            if choice.startswith("hsdp") and nodes == 1:
                continue
            plan = plan_for(base, choice, nodes=nodes, gpus_per_node=gpus_per_node, vram_gib=vram_gib)
            group = gpus_per_node if choice.startswith("hsdp") else plan.hardware.num_gpus
            step = time_step(work, timed_engine(plan.engine), num_gpus=group, gpu=gpu)
            cells.append(Cell(choice, nodes, plan, estimate(profile, plan, calibration), step))
    return cells


def fewest_nodes(cells: list[Cell]) -> list[Cell]:
    """Per engine choice, the fitting cell on the fewest nodes (fastest among equals): the side-by-side rows."""
    best: dict[str, Cell] = {}
    for cell in cells:
        if not cell.fits:
            continue
        held = best.get(cell.choice)
        if held is None or (cell.nodes, cell.step.per_sample) < (held.nodes, held.step.per_sample):
            best[cell.choice] = cell
    return sorted(best.values(), key=lambda c: (c.plan.hardware.num_gpus, c.step.per_sample))
