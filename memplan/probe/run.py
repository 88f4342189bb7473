"""Run a plan for real and measure memory per phase: init, then forward / backward / optimizer_step per step.

Each phase runs between a reset and a read of the meter (memplan.probe.meter); after each phase the
live tensors are counted per category (memplan.probe.census). Every step is recorded (no separate
warm-up); a phase's reading and each category are the max over steps. Out-of-memory is a result
(status 'oom', the phase, the failed request parsed from the message); other exceptions give status
'error' with one line; ``timeout_s`` gives status 'timeout'. The engine (plain PyTorch/DDP or
DeepSpeed) comes from memplan.probe.engines, the VRAM cap from memplan.probe.cap, the rank setup from
memplan.probe.distributed; the per-rank results become one ``memplan.probe/1`` record here.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from memplan.probe import faults, records
from memplan.probe.apply import parameter_counts
from memplan.probe.build import DTYPES, make_batch
from memplan.probe.cap import DeviceCap
from memplan.probe.census import category_bytes
from memplan.probe.context import emulated_context_bytes, start_context_bytes
from memplan.probe.distributed import gather_objects, resolve_device, world
from memplan.probe.engines import Engine, EngineSetup, make_engine
from memplan.probe.environment import before_run, environment
from memplan.probe.layout import layout_at_failure, watch_out_of_memory
from memplan.probe.meter import Meter
from memplan.probe.tracker import StorageTracker
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.units import gib_to_bytes
from memplan.spec.vocabulary import Phase

UNIT_BYTES = {"bytes": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9}
ALLOCATE_PATTERN = re.compile(r"Tried to allocate ([0-9.]+) ?([KMGT]i?B|bytes|B)")
# c10/cuda/CUDACachingAllocator.cpp, the OOM message: "Of the allocated memory X is allocated by PyTorch,
# and Y is reserved by PyTorch but unallocated" (Y: free space inside segments that hold a live block,
# which release_cached_blocks cannot give back: the fragmentation at the failing request)
HELD_PATTERN = re.compile(r"([0-9.]+) ?([KMGT]i?B|bytes|B) is allocated by PyTorch, and ([0-9.]+) ?([KMGT]i?B|bytes|B) "
                          r"is reserved by PyTorch but unallocated")


class ProbeTimeout(Exception):
    """The run passed its timeout_s."""


class PhaseFailure(Exception):
    """Wraps an exception with the phase it happened in."""

    def __init__(self, phase: str, error: BaseException) -> None:
        super().__init__(f"{phase}: {error}")
        self.phase = phase
        self.error = error


def requested_bytes(message: str) -> int | None:
    """The failed allocation of an OOM message ('Tried to allocate 2.03 GiB' -> 2179072819)."""
    match = ALLOCATE_PATTERN.search(message)
    if not match:
        return None
    return int(round(float(match.group(1)) * UNIT_BYTES[match.group(2)]))


def oom_fragmentation(message: str) -> dict[str, int]:
    """{allocated_bytes, reserved_unallocated_bytes} at the failing request, from PyTorch's OOM message
    (HELD_PATTERN); empty when the message does not carry them."""
    match = HELD_PATTERN.search(message)
    if not match:
        return {}
    size = lambda value, unit: int(round(float(value) * UNIT_BYTES[unit]))  # noqa: E731
    return {"allocated_bytes": size(match.group(1), match.group(2)),
            "reserved_unallocated_bytes": size(match.group(3), match.group(4))}


def is_oom(error: BaseException) -> bool:
    """torch.OutOfMemoryError, or a RuntimeError carrying the allocator's 'out of memory' text."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


@dataclass
class RankResult:
    """What one rank measured."""

    rank: int
    device: str
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    step_phases: list[dict[str, dict[str, int]]] = field(default_factory=list)
    step_times_s: list[float] = field(default_factory=list)
    phase_times_s: list[dict[str, float]] = field(default_factory=list)  # per step: forward, backward, optimizer_step
    categories: dict[str, int] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    error_trace: str | None = None  # the end of the traceback, for status 'error'
    oom: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, dict[str, int]] = field(default_factory=dict)
    context_bytes: int | None = None  # device used - reserved when the rank starts (CUDA context, before NCCL)

    def record_phase(self, phase: str, reading: dict[str, int], step: int | None) -> None:
        if step is not None:
            while len(self.step_phases) <= step:
                self.step_phases.append({})
            self.step_phases[step][phase] = reading
        old = self.phases.get(phase)
        self.phases[phase] = reading if old is None else {k: max(old[k], reading[k]) for k in reading}

    def record_categories(self, values: dict[str, int]) -> None:
        for key, value in values.items():
            self.categories[key] = max(self.categories.get(key, 0), value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "device": self.device, "status": self.status, "error": self.error,
            "error_trace": self.error_trace, "oom": self.oom,
            "phases": self.phases, "step_phases": self.step_phases, "step_times_s": self.step_times_s,
            "phase_times_s": self.phase_times_s, "categories": self.categories, "notes": self.notes, "parameters": self.parameters,
            "context_bytes": self.context_bytes,
        }


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


@contextlib.contextmanager
def _alarm(timeout_s: float | None) -> Iterator[None]:
    """Raise ProbeTimeout in the main thread after timeout_s (no-op elsewhere or without a timeout)."""
    import threading

    if not timeout_s or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(_signum: int, _frame: Any) -> None:
        raise ProbeTimeout(f"probe passed its timeout of {timeout_s:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def file_reading(result: Any, meter: Meter, phase: Phase, *, step: int | None,
                 on_update: Callable[[Any], None] | None) -> None:
    """Record ``phase``'s reading in ``result`` and report it; a failed read is passed over."""
    try:
        result.record_phase(phase.value, meter.read(), step)
        if on_update is not None:
            on_update(result)
    except Exception:  # noqa: BLE001 - a failed read after an OOM must not hide the OOM
        pass


def open_device(result: Any, device: str, local_rank: int, *, vram_cap_gib: float | None,
                vram_cap_card: str | None) -> tuple[torch.device, StorageTracker | None, DeviceCap] | None:
    """The rank's device, CPU storage tracker (None on an accelerator) and VRAM cap; fills ``result``'s
    device and start context. None, with ``result`` marked an error, when the device cannot be had."""
    cap = gib_to_bytes(vram_cap_gib) if vram_cap_gib else None
    try:
        torch_device = resolve_device(device, local_rank)
    except RuntimeError as error:
        result.status, result.error = "error", f"setup: {_one_line(error)}"
        return None
    result.device = str(torch_device)
    result.context_bytes = start_context_bytes(torch_device)
    if torch_device.type == "cuda":
        watch_out_of_memory()  # an OOM record's layout at the failing request (memplan.probe.layout)
    tracker = StorageTracker(device_type="cpu", limit_bytes=cap) if torch_device.type == "cpu" else None
    device_cap = DeviceCap(torch_device, cap, emulated_context=emulated_context_bytes(vram_cap_card),
                           start_context=result.context_bytes or 0)
    return torch_device, tracker, device_cap


def close_device(result: Any, torch_device: torch.device, device_cap: DeviceCap) -> None:
    """Lift the VRAM cap (its note into ``result`` when one was set) and hand cached blocks back."""
    device_cap.lift()
    if device_cap.active:
        result.notes.append(device_cap.note())
    if torch_device.type == "cuda":
        torch.cuda.empty_cache()


class _PhaseRunner:
    """Runs a phase between a reset and a read of the meter, files the reading, wraps failures."""

    def __init__(self, *, meter: Meter, result: RankResult, cap: DeviceCap,
                 on_update: Callable[[RankResult], None] | None = None,
                 on_phase: Callable[[str, int | None], None] | None = None) -> None:
        self.meter, self.result, self.on_update, self.cap, self.on_phase = meter, result, on_update, cap, on_phase

    def __call__(self, phase: Phase, function: Callable[[], Any], step: int | None = None) -> tuple[Any, float]:
        if self.on_phase is not None:
            self.on_phase(phase.value, step)  # progress (memplan.probe.progress)
        self.meter.reset()
        self.cap.apply()
        faults.at_phase(phase, step)
        started = time.perf_counter()
        try:
            value = function()
            self.meter.synchronize()
        except Exception as error:  # noqa: BLE001 - every failure is a result
            self._file(phase, step)
            raise PhaseFailure(phase.value, error) from error
        elapsed = time.perf_counter() - started
        self._file(phase, step)
        return value, elapsed

    def _file(self, phase: Phase, step: int | None) -> None:
        file_reading(self.result, self.meter, phase, step=step, on_update=self.on_update)


def _train_steps(engine: Engine, batch: dict[str, torch.Tensor], *, steps: int, run: _PhaseRunner,
                 device: torch.device) -> None:
    result = run.result
    for step in range(steps):
        with engine.autocast():
            loss, forward_s = run(Phase.FORWARD, lambda: engine.module(batch), step)
        result.record_categories(category_bytes(engine.model, engine.optimizer, device))
        _, backward_s = run(Phase.BACKWARD, lambda: engine.backward(loss), step)
        result.record_categories(category_bytes(engine.model, engine.optimizer, device))
        del loss
        _, step_s = run(Phase.OPTIMIZER_STEP, engine.step, step)
        result.record_categories(category_bytes(engine.model, engine.optimizer, device))
        result.step_times_s.append(round(forward_s + backward_s + step_s, 6))
        result.phase_times_s.append({Phase.FORWARD.value: round(forward_s, 6), Phase.BACKWARD.value: round(backward_s, 6),
                                     Phase.OPTIMIZER_STEP.value: round(step_s, 6)})


def _inference_steps(engine: Engine, batch: dict[str, torch.Tensor], *, steps: int, run: _PhaseRunner) -> None:
    engine.model.eval()
    for step in range(steps):
        with torch.no_grad(), engine.autocast():
            loss, forward_s = run(Phase.FORWARD, lambda: engine.module(batch), step)
        del loss
        run.result.step_times_s.append(round(forward_s, 6))


def _file_failure(result: RankResult, failure: PhaseFailure) -> None:
    error = failure.error
    if isinstance(error, ProbeTimeout):
        result.status, result.error = "timeout", f"{failure.phase}: {error}"
    elif is_oom(error):
        result.status, result.error = "oom", f"{failure.phase}: {_one_line(error)}"
        requested = requested_bytes(str(error))
        result.oom = {"phase": failure.phase, "rank": result.rank, "requested_bytes": requested,
                      "step": len(result.step_times_s) + 1, **oom_fragmentation(str(error))}
        layout = layout_at_failure(requested)  # the observer's, at the request (memplan.probe.layout)
        if layout:
            result.oom["layout"] = layout
    else:
        import traceback

        result.status, result.error = "error", f"{failure.phase}: {_one_line(error)}"
        result.error_trace = "".join(traceback.format_exception(error))[-3000:]


def _run_phases(setup: EngineSetup, *, steps: int, run: _PhaseRunner) -> None:
    """init, then the training (or inference) steps; failures propagate as PhaseFailure."""
    compute = DTYPES[setup.plan.precision.compute]

    def init() -> tuple[Engine, dict[str, torch.Tensor]]:
        engine = make_engine(setup)
        return engine, make_batch(engine.model, setup.profile, setup.device, compute)

    (engine, batch), _ = run(Phase.INIT, init)
    result = run.result
    result.notes = list(engine.model.notes)
    result.parameters = {"trainable": parameter_counts(engine.model, trainable=True),
                         "frozen": parameter_counts(engine.model, trainable=False)}
    result.record_categories(category_bytes(engine.model, engine.optimizer, setup.device))
    if setup.plan.mode == "train":
        _train_steps(engine, batch, steps=steps, run=run, device=setup.device)
    else:
        _inference_steps(engine, batch, steps=steps, run=run)


def measure_rank(profile: Profile, plan: Plan, *, steps: int = 3, vram_cap_gib: float | None = None,
                 device: str = "cuda", timeout_s: float | None = None,
                 on_update: Callable[[RankResult], None] | None = None,
                 ds_config: dict[str, Any] | None = None, vram_cap_card: str | None = None,
                 on_phase: Callable[[str, int | None], None] | None = None) -> RankResult:
    """Build, apply, and run ``steps`` steps on this rank; every failure is filed in the result.

    ``on_update(result)`` is called after every phase (the launcher saves partial results with it);
    ``ds_config`` replaces deepspeed_config(plan) (``memplan probe --deepspeed-config FILE``).
    Stacks other than sa2va (Trainer, a custom loop) run in memplan.probe.stacks.
    """
    if plan.stack.kind != "sa2va":
        from memplan.probe.stacks import measure_stack_rank

        return measure_stack_rank(profile, plan, steps=steps, vram_cap_gib=vram_cap_gib, device=device,
                                  timeout_s=timeout_s, on_update=on_update, ds_config=ds_config,
                                  vram_cap_card=vram_cap_card)
    rank, local_rank, world_size = world()
    result = RankResult(rank=rank, device=device)
    opened = open_device(result, device, local_rank, vram_cap_gib=vram_cap_gib, vram_cap_card=vram_cap_card)
    if opened is None:
        return result
    torch_device, tracker, device_cap = opened
    run = _PhaseRunner(meter=Meter(torch_device, tracker), result=result, cap=device_cap, on_update=on_update,
                       on_phase=on_phase)
    setup = EngineSetup(profile=profile, plan=plan, device=torch_device, world_size=world_size, ds_config=ds_config)
    try:
        with tracker if tracker is not None else contextlib.nullcontext(), _alarm(timeout_s):
            _run_phases(setup, steps=steps, run=run)
    except PhaseFailure as failure:
        _file_failure(result, failure)
    except ProbeTimeout as error:  # raised between phases
        result.status, result.error = "timeout", str(error)
    finally:
        close_device(result, torch_device, device_cap)
    if on_update is not None:
        on_update(result)
    return result


def gather_ranks(result: RankResult, device: torch.device) -> list[dict[str, Any]]:
    """Every rank's result dict on every rank; alone: just this one."""
    return gather_objects(result.as_dict(), device)


def assemble_record(profile: Profile, plan: Plan, ranks: list[dict[str, Any]], *, env: dict[str, Any],
                    vram_cap_gib: float | None = None, command: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A ``memplan.probe/1`` record from per-rank result dicts (RankResult.as_dict())."""
    first = min(ranks, key=lambda rank: rank.get("rank", 0)) if ranks else {}
    return records.make_record(
        profile=profile.model_dump(mode="json"),
        plan=plan.model_dump(mode="json"),
        ranks=ranks,
        environment=env,
        command=command if command is not None else " ".join(sys.argv),
        vram_cap_bytes=gib_to_bytes(vram_cap_gib) if vram_cap_gib else None,
        notes=first.get("notes", ()),
        parameters=first.get("parameters"),
        **overrides,
    )


def run_probe(profile: Profile, plan: Plan, *, steps: int = 3, vram_cap_gib: float | None = None,
              device: str = "cuda", timeout_s: float | None = None, command: str | None = None,
              ds_config: dict[str, Any] | None = None, vram_cap_card: str | None = None,
              on_phase: Callable[[str, int | None], None] | None = None) -> dict[str, Any]:
    """Measure ``plan`` on ``profile`` for real and return a ``memplan.probe/1`` record.

    Under torchrun every rank measures itself and the per-rank results are all-gathered, so every
    rank returns the same record (rank 0 is the one that should write it). A failed rank in a
    multi-rank run would leave the others waiting in a collective: memplan.probe.launch handles that.
    """
    before = before_run()  # dispatch cost and load, before the model and the engine exist (their hooks slow every call)
    result = measure_rank(profile, plan, steps=steps, vram_cap_gib=vram_cap_gib, device=device, timeout_s=timeout_s,
                          ds_config=ds_config, vram_cap_card=vram_cap_card, on_phase=on_phase)
    torch_device = torch.device(result.device)
    ranks = gather_ranks(result, torch_device)
    record = assemble_record(profile, plan, ranks, env=environment(torch_device, world()[2], before=before),
                             vram_cap_gib=vram_cap_gib, command=command)
    return records.with_cap_card(record, vram_cap_card)



__all__ = ["run_probe", "measure_rank", "assemble_record", "gather_ranks", "requested_bytes", "oom_fragmentation",
           "RankResult"]
