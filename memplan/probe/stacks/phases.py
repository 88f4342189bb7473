"""Phase boundaries set from inside someone else's loop (Trainer callbacks, hooks), filed like the harness's.

``PhaseClock.start(phase, step)`` resets the meter (torch.cuda.reset_peak_memory_stats, or the CPU
StorageTracker's peak) and applies the VRAM cap; ``stop()`` reads it and files the reading in the
RankResult (max over steps in ``phases``, every step in ``step_phases``), with the per-category
bytes of the live tensors. A failure while a phase is open is reported in that phase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from memplan.probe.run import RankResult, file_reading
from memplan.spec.vocabulary import Phase


@dataclass
class StackRankResult(RankResult):
    """The harness's RankResult plus ``stack``: what the stack really did (see memplan.probe.stacks)."""

    stack: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "stack": self.stack}


@dataclass
class PhaseClock:
    """Opens and closes phases on a Meter and files their readings in a RankResult."""

    meter: Any  # memplan.probe.run.Meter
    result: Any  # memplan.probe.run.RankResult
    cap: Any = None  # memplan.probe.run.DeviceCap
    on_update: Callable[[Any], None] | None = None
    categories: Callable[[], dict[str, int]] | None = None
    current: tuple[Phase, int | None] | None = None
    started: float = 0.0
    durations: dict[tuple[str, int | None], float] = field(default_factory=dict)

    def start(self, phase: Phase, step: int | None = None) -> None:
        self.meter.reset()
        if self.cap is not None:
            self.cap.apply()
        self.current = (phase, step)
        self.started = time.perf_counter()

    def stop(self) -> float:
        """Close the open phase: read and file it; returns its seconds (0.0 if none was open)."""
        if self.current is None:
            return 0.0
        phase, step = self.current
        self.current = None
        self.meter.synchronize()
        elapsed = time.perf_counter() - self.started
        self.durations[(phase.value, step)] = elapsed
        self.file(phase, step)
        if self.categories is not None:
            self.result.record_categories(self.categories())
        return elapsed

    def switch(self, phase: Phase, step: int | None = None) -> float:
        """Close the open phase and open ``phase``."""
        elapsed = self.stop()
        self.start(phase, step)
        return elapsed

    def file(self, phase: Phase, step: int | None) -> None:
        file_reading(self.result, self.meter, phase, step=step, on_update=self.on_update)

    def abort(self) -> str | None:
        """On a failure: file the open phase's reading; returns its name (None: between phases)."""
        if self.current is None:
            return None
        phase, step = self.current
        self.current = None
        self.file(phase, step)
        return phase.value


TIMED_PHASES = (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)


def phase_seconds(clock: PhaseClock, steps: int) -> list[dict[str, float]]:
    """{forward, backward, optimizer_step: seconds} of each step that closed all three (rounded to
    microseconds), bounded by the callbacks and hooks that open and close the phases."""
    out = []
    for step in range(steps):
        parts = {phase.value: clock.durations.get((phase.value, step)) for phase in TIMED_PHASES}
        if all(part is not None for part in parts.values()):
            out.append({name: round(part, 6) for name, part in parts.items()})
    return out


def step_seconds(clock: PhaseClock, steps: int) -> list[float]:
    """Forward + backward + optimizer seconds of each step (rounded to microseconds)."""
    return [round(sum(parts.values()), 6) for parts in phase_seconds(clock, steps)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
