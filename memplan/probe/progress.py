"""Progress of a probe on stderr (rich): the phase, the step and the elapsed time, so a run of
minutes (a CPU probe of a 4B model builds for minutes) is never silent. No torch here.

One GPU: the phase runner calls ``ProbeProgress.phase(name, step)`` as each phase starts
(memplan.probe.run._PhaseRunner). Several GPUs: the launcher polls rank 0's partial result, which
the worker saves after every phase (memplan.probe.launch), and calls ``ProbeProgress.rank_result``.
Shown only when stderr is a terminal (piped output and tests stay clean).
"""

from __future__ import annotations

from typing import Any

PHASE_WORDS = {"init": "building the model (random weights) and the engine",
               "forward": "forward", "backward": "backward", "optimizer_step": "optimizer step"}


def phase_text(phase: str | None, step: int | None, steps: int) -> str:
    """'init: building the model ...' or 'step 2/3: backward'."""
    if phase is None or phase == "init":
        return f"init: {PHASE_WORDS['init']}"
    where = f"step {step + 1}/{steps}" if step is not None else "step"
    return f"{where}: {PHASE_WORDS.get(phase, phase)}"


def rank_text(result: dict[str, Any] | None, steps: int, gpus: int) -> str:
    """What rank 0's partial result (RankResult.as_dict) says was done last, for a torchrun launch."""
    prefix = f"{gpus} ranks under torchrun; rank 0"
    if not result:
        return f"{prefix}: starting (imports, rendezvous, CUDA)"
    step_phases = result.get("step_phases") or []
    if not step_phases or not step_phases[-1]:
        return f"{prefix}: {'init done' if 'init' in (result.get('phases') or {}) else 'init'}"
    last = list(step_phases[-1])[-1]
    return f"{prefix}: {phase_text(last, len(step_phases) - 1, steps)} done"


class ProbeProgress:
    """A rich progress line on stderr (spinner, what runs now, elapsed); a no-op when not a terminal."""

    def __init__(self, *, steps: int, gpus: int = 1, enabled: bool | None = None) -> None:
        from rich.console import Console

        self.steps, self.gpus = steps, gpus
        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.text = phase_text(None, None, steps) if gpus == 1 else rank_text(None, steps, gpus)
        self._progress = None
        self._task = None

    def __enter__(self) -> "ProbeProgress":
        if self.enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("memplan probe: {task.description}"),
                                      TimeElapsedColumn(), console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.text, total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _show(self, text: str) -> None:
        self.text = text
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def phase(self, phase: str, step: int | None) -> None:
        self._show(phase_text(phase, step, self.steps))

    def rank_result(self, result: dict[str, Any] | None) -> None:
        self._show(rank_text(result, self.steps, self.gpus))
