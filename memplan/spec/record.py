"""A probe record as a typed model (schema ``memplan.probe/1``), keyed by Phase and Category.

memplan.probe.records reads and writes the JSON lines; this model is what calibrate and validate
read them into (memplan.probe.calibrate.measured_from_record), so that a measurement lines up with an estimate phase by phase and, where the probe
took a census of the live tensors (``ranks[].categories``), category by category. Records written
before a field existed still read: every field but schema, run_id, status, profile and plan has a
default, and fields this model does not name are kept (``extra="allow"``).
A null summary reads as an empty one.
"""

from __future__ import annotations

import statistics
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memplan.spec.vocabulary import Category, Phase

SCHEMA = "memplan.probe/1"
STATUSES = ("ok", "oom", "error", "timeout")
Status = Literal["ok", "oom", "error", "timeout"]
Bytes = Annotated[int, Field(ge=0)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class PhaseReading(_Record):
    """The allocator, the device and the host at one phase of a step (max over the steps)."""

    max_allocated_bytes: Bytes = 0
    max_reserved_bytes: Bytes = 0
    device_used_bytes: Bytes | None = None
    host_rss_bytes: Bytes | None = None


class RankRecord(_Record):
    rank: int = 0
    status: Status = "ok"
    phases: dict[Phase, PhaseReading] = Field(default_factory=dict)
    categories: dict[Category, Bytes] = Field(default_factory=dict)  # census of live tensors (max over steps)


class Summary(_Record):
    peak_allocated_bytes: Bytes = 0
    peak_reserved_bytes: Bytes = 0
    peak_device_bytes: Bytes = 0
    peak_host_bytes: Bytes = 0
    peak_phase: Phase | None = None


class ProbeRecord(_Record):
    """One probe run. ``profile`` and ``plan`` stay mappings here: the loaders validate them into
    Profile and Plan with messages that name the record and the field."""

    schema_: Literal["memplan.probe/1"] = Field(alias="schema")
    run_id: str | int | None = None
    status: Status = "error"
    profile: dict[str, Any]
    plan: dict[str, Any]
    vram_cap_bytes: Bytes | None = None
    environment: dict[str, Any] = Field(default_factory=dict)
    ranks: list[RankRecord] = Field(default_factory=list)
    summary: Summary = Field(default_factory=Summary)

    def by_phase(self, field: str) -> dict[Phase, int]:
        """One reading (a PhaseReading field) per phase, max over ranks; phases without it are left out."""
        out: dict[Phase, int] = {}
        for rank in self.ranks:
            for phase, reading in rank.phases.items():
                value = getattr(reading, field)
                if value is not None:
                    out[phase] = max(out.get(phase, 0), value)
        return out

    def categories(self) -> dict[Category, int] | None:
        """Bytes per Category from the census, max over ranks; None when no rank took one."""
        censused = [rank.categories for rank in self.ranks if rank.categories]
        if not censused:
            return None
        return {category: max(c.get(category, 0) for c in censused)
                for category in Category if any(category in c for c in censused)}


def warmup_steps(plan: dict[str, Any]) -> int:
    """Steps before the steady state: the first (kernel selection, allocator growth, optimizer state);
    under ZeRO-3 also the second, on which DeepSpeed records its parameter-fetch trace (the first
    reset_step switches the coordinator to RECORD, the second to COMPLETE, and only then does it
    prefetch: deepspeed/runtime/zero/partitioned_param_coordinator.py, reset_step)."""
    engine = plan.get("engine") or {}
    return 2 if engine.get("kind") == "deepspeed" and engine.get("zero_stage") == 3 else 1


def steady_phase_seconds(ranks: list[dict[str, Any]], plan: dict[str, Any]) -> dict[str, float] | None:
    """{forward, backward, optimizer_step: seconds}: per phase, the slowest rank's median over the steps
    after warmup_steps(plan) (records since 2026-12-07 carry ``phase_times_s``); None without them."""
    skip = warmup_steps(plan)
    out: dict[str, float] = {}
    for rank in ranks:
        steps = [step for step in rank.get("phase_times_s") or [] if isinstance(step, dict)][skip:]
        for phase in {name for step in steps for name in step}:
            values = [float(step[phase]) for step in steps if step.get(phase) is not None]
            if values:
                out[phase] = max(out.get(phase, 0.0), statistics.median(values))
    return out or None


def steady_step_seconds(ranks: list[dict[str, Any]], plan: dict[str, Any]) -> float | None:
    """The slowest rank's median step time after warmup_steps(plan) (ranks wait for each other at every
    collective); None when no rank ran past its warm-up."""
    skip = warmup_steps(plan)
    medians = []
    for rank in ranks:
        steps = [float(t) for t in rank.get("step_times_s") or [] if t is not None][skip:]
        if steps:
            medians.append(statistics.median(steps))
    return max(medians) if medians else None
