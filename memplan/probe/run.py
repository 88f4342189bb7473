"""Run a plan for real and measure memory per phase: init, then forward / backward / optimizer_step per step.

Before each phase the peak counters are reset; after it the probe reads (all bytes, int):
``max_allocated_bytes`` (torch.cuda.max_memory_allocated), ``max_reserved_bytes``
(torch.cuda.max_memory_reserved), ``device_used_bytes`` (torch.cuda.mem_get_info: total - free, which
includes the CUDA context and NCCL buffers) and ``host_rss_bytes`` (the process's peak RSS in the phase,
VmHWM after resetting it through /proc/self/clear_refs; VmRSS where that is not possible).
On ``device="cpu"`` a ``StorageTracker`` stands in for the allocator: allocated = reserved = device =
live tensor-storage bytes (no cache, no rounding), so the CPU tests exercise the same code path.

Every step is recorded (no separate warm-up); a phase's reading is the max over steps. Out-of-memory
is a result (status 'oom', the phase, the failed request parsed from the message); other exceptions
give status 'error' with one line; ``timeout_s`` gives status 'timeout'.

Per-rank ``categories`` are measured from real tensors after each phase (best effort, max over steps):
weights (frozen parameters on the device), trainable_weights, gradients (``.grad`` plus DeepSpeed's
gradient partitions and buckets: optimizer attributes whose name contains "grad"), master_weights
(DeepSpeed's fp32 partitions: attributes containing "fp32" but not "grad") and optimizer_state
(tensors in the torch optimizer's ``state``). Storages are counted once, in the first category found.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterator

import torch

from memplan.spec.plan import Plan
from memplan.probe import records
from memplan.probe.apply import apply_plan, parameter_counts
from memplan.probe.build import DTYPES, Sa2VAProbeModel, build_model, make_batch
from memplan.probe.tracker import StorageTracker
from memplan.spec.profile import Profile
from memplan.spec.units import gib_to_bytes
from memplan.spec.vocabulary import Category, Phase

STEP_PHASES = (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)
UNIT_BYTES = {"bytes": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9}
ALLOCATE_PATTERN = re.compile(r"Tried to allocate ([0-9.]+) ?([KMGT]i?B|bytes|B)")


class ProbeTimeout(Exception):
    """The run passed its timeout_s."""


class PhaseFailure(Exception):
    """Wraps an exception with the phase it happened in."""

    def __init__(self, phase: str, error: BaseException) -> None:
        super().__init__(f"{phase}: {error}")
        self.phase = phase
        self.error = error


# --------------------------------------------------------------------------- readings


def requested_bytes(message: str) -> int | None:
    """The failed allocation of an OOM message ('Tried to allocate 2.03 GiB' -> 2179072819)."""
    match = ALLOCATE_PATTERN.search(message)
    if not match:
        return None
    return int(round(float(match.group(1)) * UNIT_BYTES[match.group(2)]))


def is_oom(error: BaseException) -> bool:
    """torch.OutOfMemoryError, or a RuntimeError carrying the allocator's 'out of memory' text."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_host_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def host_rss_bytes() -> int:
    """Peak RSS since the last reset (VmHWM), else current RSS (VmRSS, psutil as a fallback)."""
    value = _proc_status_bytes("VmHWM") or _proc_status_bytes("VmRSS")
    if value is not None:
        return value
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return 0


@dataclass
class Meter:
    """Resets and reads the peak counters of one device (CUDA allocator, or a StorageTracker on CPU)."""

    device: torch.device
    tracker: StorageTracker | None = None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        self.synchronize()
        reset_host_peak()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.tracker is not None:
            self.tracker.reset_peak()

    def read(self) -> dict[str, int]:
        self.synchronize()
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            allocated = int(torch.cuda.max_memory_allocated(self.device))
            reserved = int(torch.cuda.max_memory_reserved(self.device))
            used = int(total - free)
        else:
            allocated = reserved = used = self.tracker.peak() if self.tracker else 0
        return {
            "max_allocated_bytes": allocated,
            "max_reserved_bytes": reserved,
            "device_used_bytes": used,
            "host_rss_bytes": host_rss_bytes(),
        }


# --------------------------------------------------------------------------- categories


def _storage_key(tensor: torch.Tensor) -> tuple[str, int] | None:
    try:
        storage = tensor.untyped_storage()
        return (str(tensor.device), storage.data_ptr()) if storage.nbytes() else None
    except (RuntimeError, NotImplementedError):
        return None


def _param_tensor(param: torch.Tensor) -> torch.Tensor:
    """The tensor holding a parameter's data on this rank (ZeRO-3: its partition ``ds_tensor``)."""
    return getattr(param, "ds_tensor", None) if hasattr(param, "ds_tensor") else param


def _walk_tensors(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk_tensors(item, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for item in value.values():
            yield from _walk_tensors(item, depth + 1)


def _inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside DeepSpeed's ZeRO / bf16 wrappers."""
    inner = optimizer
    for _ in range(3):
        if isinstance(inner, torch.optim.Optimizer) and not hasattr(inner, "optimizer"):
            break
        inner = getattr(inner, "optimizer", inner)
    return inner


def category_bytes(model: torch.nn.Module, optimizer: Any, device: torch.device) -> dict[str, int]:
    """Bytes per Category from the tensors on ``device`` (best effort; see the module docstring)."""
    seen: set[tuple[str, int]] = set()
    totals = {category.value: 0 for category in (Category.WEIGHTS, Category.TRAINABLE_WEIGHTS, Category.GRADIENTS,
                                                 Category.MASTER_WEIGHTS, Category.OPTIMIZER_STATE)}

    def add(category: Category, tensor: torch.Tensor | None) -> None:
        if tensor is None or not isinstance(tensor, torch.Tensor) or tensor.device.type != device.type:
            return
        key = _storage_key(tensor)
        if key is None or key in seen:
            return
        seen.add(key)
        totals[category.value] += int(tensor.untyped_storage().nbytes())

    params = list(model.parameters())
    for param in params:
        add(Category.GRADIENTS, param.grad)
    wrapper_attrs = vars(optimizer) if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer) else {}
    for name, value in wrapper_attrs.items():
        if "grad" in name.lower():
            for tensor in _walk_tensors(value):
                add(Category.GRADIENTS, tensor)
    for name, value in wrapper_attrs.items():
        if "fp32" in name.lower() and "grad" not in name.lower():
            for tensor in _walk_tensors(value):
                add(Category.MASTER_WEIGHTS, tensor)
    inner = _inner_optimizer(optimizer) if optimizer is not None else None
    for state in getattr(inner, "state", {}).values():
        for tensor in _walk_tensors(state):
            add(Category.OPTIMIZER_STATE, tensor)
    for param in params:
        add(Category.TRAINABLE_WEIGHTS if param.requires_grad else Category.WEIGHTS, _param_tensor(param))
    return totals


# --------------------------------------------------------------------------- environment


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """Where the probe ran: GPU, driver, library versions, host."""
    cuda = device.type == "cuda"
    return {
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_total_bytes": int(torch.cuda.get_device_properties(device).total_memory) if cuda else None,
        "driver": _driver_version() if cuda else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "deepspeed": _version("deepspeed"),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "world_size": world_size,
    }


# --------------------------------------------------------------------------- distributed


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_distributed(device: torch.device) -> None:
    """Initialise torch.distributed (single process: a local rendezvous) if it is not yet."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, **kwargs)


# --------------------------------------------------------------------------- engines


@dataclass
class Engine:
    """What a training step needs: the module to call, and backward/step/zero functions."""

    model: Sa2VAProbeModel
    module: torch.nn.Module  # what forward() calls (DDP wrapper or DeepSpeed engine or the model)
    optimizer: Any
    backward: Callable[[torch.Tensor], None]
    step: Callable[[], None]
    autocast: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext)


def _autocast(plan: Plan, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if plan.precision.compute == "fp32":
        return contextlib.nullcontext
    dtype = DTYPES[plan.precision.compute]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(plan: Plan, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """torch AdamW (foreach per plan) or SGD, or bitsandbytes AdamW8bit; Sa2VA's lr/weight decay."""
    from memplan.integrations.deepspeed import BETAS, EPSILON, LEARNING_RATE, WEIGHT_DECAY

    kind = plan.optimizer.kind
    if kind == "sgd":
        return torch.optim.SGD(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, foreach=plan.optimizer.foreach)
    if kind == "adam8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise RuntimeError("optimizer.kind=adam8bit needs bitsandbytes, which is not installed") from None
        return bitsandbytes.optim.AdamW8bit(params, lr=LEARNING_RATE, betas=BETAS, weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=LEARNING_RATE, betas=BETAS, eps=EPSILON, weight_decay=WEIGHT_DECAY,
                             foreach=plan.optimizer.foreach)


def pytorch_engine(model: Sa2VAProbeModel, plan: Plan, device: torch.device, world_size: int) -> Engine:
    """Plain PyTorch: the model on the device, DDP across ranks, AdamW/SGD, clip 1.0, GradScaler for fp16."""
    model.to(device)
    module: torch.nn.Module = model
    if world_size > 1:
        ensure_distributed(device)
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        module = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if plan.mode == "inference":
        return Engine(model, module, None, lambda loss: None, lambda: None, _autocast(plan, device))
    optimizer = make_optimizer(plan, params)
    scaler = torch.amp.GradScaler(device.type) if plan.precision.compute == "fp16" else None

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler else loss).backward()

    def step() -> None:
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=plan.optimizer.foreach)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Engine(model, module, optimizer, backward, step, _autocast(plan, device))


def deepspeed_engine(model: Sa2VAProbeModel, plan: Plan, device: torch.device,
                     config: dict[str, Any] | None = None) -> Engine:
    """deepspeed.initialize with ``config`` (a user's file, e.g. one memplan emitted) or deepspeed_config(plan)."""
    import deepspeed

    from memplan.integrations.deepspeed import deepspeed_config

    params = [p for p in model.parameters() if p.requires_grad]
    client_optimizer = make_optimizer(plan, params) if plan.optimizer.kind == "adam8bit" else None
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, config=config or deepspeed_config(plan), optimizer=client_optimizer
    )
    return Engine(model, engine, optimizer, engine.backward, engine.step)


@contextlib.contextmanager
def build_context(plan: Plan, device: torch.device, config: dict[str, Any] | None = None) -> Iterator[None]:
    """Where parameters are created: deepspeed.zero.Init for ZeRO-3 training with zero3_init, else the CPU.

    Inference plans always build on the CPU and run as a plain module on the device.
    """
    zero3 = plan.engine.kind == "deepspeed" and plan.engine.zero_stage == 3
    if zero3 and plan.engine.zero3_init and plan.mode == "train":
        import deepspeed

        from memplan.integrations.deepspeed import deepspeed_config

        with deepspeed.zero.Init(config_dict_or_path=config or deepspeed_config(plan),
                                 dtype=DTYPES[plan.precision.compute]):
            yield
    else:
        with torch.device("cpu"):
            yield


def make_engine(profile: Profile, plan: Plan, device: torch.device, world_size: int,
                ds_config: dict[str, Any] | None = None) -> Engine:
    """Build the model (CPU, or partitioned under zero.Init), apply the plan, start the engine."""
    if plan.engine.kind == "deepspeed":
        ensure_distributed(device)
    with build_context(plan, device, ds_config):
        model = build_model(profile, plan)
    model = apply_plan(model, plan)
    if plan.engine.kind == "deepspeed" and plan.mode == "train":
        return deepspeed_engine(model, plan, device, ds_config)
    return pytorch_engine(model, plan, device, world_size)


# --------------------------------------------------------------------------- the run


@dataclass
class RankResult:
    """What one rank measured."""

    rank: int
    device: str
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    step_phases: list[dict[str, dict[str, int]]] = field(default_factory=list)
    step_times_s: list[float] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    error_trace: str | None = None  # the end of the traceback, for status 'error'
    oom: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, dict[str, int]] = field(default_factory=dict)

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
            "categories": self.categories, "notes": self.notes, "parameters": self.parameters,
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


def _injected_fault(phase: Phase, step: int | None) -> None:
    """Test hook MEMPLAN_PROBE_FAULT=RANK:CODE@PHASE: this rank exits with CODE (or hangs, CODE=hang) on
    entering PHASE of the second step (init: at once), while its peers carry on into a collective."""
    fault = os.environ.get("MEMPLAN_PROBE_FAULT", "")
    if "@" not in fault:
        return
    who, where = fault.split("@", 1)
    target, code = who.split(":")
    if int(target) != world()[0] or where != phase.value or (step is not None and step != 1):
        return
    print(f"memplan probe: injected fault on rank {target} in {where} (MEMPLAN_PROBE_FAULT={fault})", flush=True)
    if code == "hang":
        time.sleep(10**6)
    os._exit(int(code))


class _PhaseRunner:
    """Runs a phase between a reset and a read of the meter, files the reading, wraps failures."""

    def __init__(self, meter: Meter, result: RankResult, on_update: Callable[[RankResult], None] | None = None,
                 cap: DeviceCap | None = None, on_phase: Callable[[str, int | None], None] | None = None) -> None:
        self.meter, self.result, self.on_update, self.cap, self.on_phase = meter, result, on_update, cap, on_phase

    def __call__(self, phase: Phase, function: Callable[[], Any], step: int | None = None) -> tuple[Any, float]:
        if self.on_phase is not None:
            self.on_phase(phase.value, step)  # progress (memplan.probe.progress)
        self.meter.reset()
        if self.cap is not None:
            self.cap.apply()
        _injected_fault(phase, step)
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
        try:
            self.result.record_phase(phase.value, self.meter.read(), step)
            if self.on_update is not None:
                self.on_update(self.result)
        except Exception:  # noqa: BLE001 - a failed read after an OOM must not hide the OOM
            pass


def _train_steps(engine: Engine, batch: dict[str, torch.Tensor], plan: Plan, steps: int, run: _PhaseRunner,
                 result: RankResult, device: torch.device) -> None:
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


def _inference_steps(engine: Engine, batch: dict[str, torch.Tensor], steps: int, run: _PhaseRunner,
                     result: RankResult) -> None:
    engine.model.eval()
    for step in range(steps):
        with torch.no_grad(), engine.autocast():
            loss, forward_s = run(Phase.FORWARD, lambda: engine.module(batch), step)
        del loss
        result.step_times_s.append(round(forward_s, 6))


def _file_failure(result: RankResult, failure: PhaseFailure, rank: int) -> None:
    error = failure.error
    if isinstance(error, ProbeTimeout):
        result.status, result.error = "timeout", f"{failure.phase}: {error}"
    elif is_oom(error):
        result.status, result.error = "oom", f"{failure.phase}: {_one_line(error)}"
        result.oom = {"phase": failure.phase, "rank": rank, "requested_bytes": requested_bytes(str(error))}
    else:
        import traceback

        result.status, result.error = "error", f"{failure.phase}: {_one_line(error)}"
        result.error_trace = "".join(traceback.format_exception(error))[-3000:]


def resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda: no CUDA device is visible (use --device cpu)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass
class DeviceCap:
    """Emulate a card of ``cap`` bytes on a larger one (--vram-cap).

    A card's memory holds the caching allocator's pool plus what lies outside it (the CUDA context,
    NCCL's buffers, cuBLAS workspaces, other processes' contexts). So the allocator is limited to
    ``cap - outside`` with ``outside = (total - free) - memory_reserved`` read from the device
    (torch.cuda.mem_get_info), through torch.cuda.set_per_process_memory_fraction. ``apply()`` runs
    before every phase, since NCCL allocates its buffers lazily (at init, at the first collective).
    The largest ``outside`` seen is kept for the record.
    """

    device: torch.device
    cap: int | None
    outside: int = 0

    def apply(self) -> None:
        if self.device.type != "cuda" or not self.cap:
            return
        free, total = torch.cuda.mem_get_info(self.device)
        outside = max(int(total - free) - int(torch.cuda.memory_reserved(self.device)), 0)
        self.outside = max(self.outside, outside)
        torch.cuda.set_per_process_memory_fraction(min(max(self.cap - outside, 0) / total, 1.0), self.device)

    def lift(self) -> None:
        if self.device.type == "cuda" and self.cap:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    def note(self) -> str:
        return (f"vram cap {self.cap} bytes: allocator limited to the cap less {self.outside} bytes outside it "
                f"(CUDA context, NCCL, workspaces; largest seen)")


def _run_phases(profile: Profile, plan: Plan, steps: int, run: _PhaseRunner, result: RankResult,
                torch_device: torch.device, ds_config: dict[str, Any] | None = None) -> None:
    """init, then the training (or inference) steps; failures propagate as PhaseFailure."""
    compute = DTYPES[plan.precision.compute]

    def init() -> tuple[Engine, dict[str, torch.Tensor]]:
        engine = make_engine(profile, plan, torch_device, world()[2], ds_config)
        return engine, make_batch(engine.model, profile, torch_device, compute)

    (engine, batch), _ = run(Phase.INIT, init)
    result.notes = list(engine.model.notes)
    result.parameters = {"trainable": parameter_counts(engine.model, trainable=True),
                         "frozen": parameter_counts(engine.model, trainable=False)}
    result.record_categories(category_bytes(engine.model, engine.optimizer, torch_device))
    if plan.mode == "train":
        _train_steps(engine, batch, plan, steps, run, result, torch_device)
    else:
        _inference_steps(engine, batch, steps, run, result)


def measure_rank(profile: Profile, plan: Plan, *, steps: int = 3, vram_cap_gib: float | None = None,
                 device: str = "cuda", timeout_s: float | None = None,
                 on_update: Callable[[RankResult], None] | None = None,
                 ds_config: dict[str, Any] | None = None,
                 on_phase: Callable[[str, int | None], None] | None = None) -> RankResult:
    """Build, apply, and run ``steps`` steps on this rank; every failure is filed in the result.

    ``on_update(result)`` is called after every phase (the launcher saves partial results with it);
    ``ds_config`` replaces deepspeed_config(plan) (``memplan probe --deepspeed-config FILE``).
    """
    rank, local_rank, _ = world()
    result = RankResult(rank=rank, device=device)
    cap = gib_to_bytes(vram_cap_gib) if vram_cap_gib else None
    try:
        torch_device = resolve_device(device, local_rank)
    except RuntimeError as error:
        result.status, result.error = "error", f"setup: {_one_line(error)}"
        return result
    result.device = str(torch_device)
    tracker = StorageTracker(device_type="cpu", limit_bytes=cap) if torch_device.type == "cpu" else None
    device_cap = DeviceCap(torch_device, cap)
    run = _PhaseRunner(Meter(torch_device, tracker), result, on_update, device_cap, on_phase)
    try:
        with tracker if tracker is not None else contextlib.nullcontext(), _alarm(timeout_s):
            _run_phases(profile, plan, steps, run, result, torch_device, ds_config)
    except PhaseFailure as failure:
        _file_failure(result, failure, rank)
    except ProbeTimeout as error:  # raised between phases
        result.status, result.error = "timeout", str(error)
    finally:
        device_cap.lift()
        if torch_device.type == "cuda" and cap:
            result.notes.append(device_cap.note())
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()
    if on_update is not None:
        on_update(result)
    return result


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


def release_distributed() -> None:
    """Destroy the process group this process started (a clean exit for single-process runs)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_ranks(result: RankResult, device: torch.device) -> list[dict[str, Any]]:
    """Every rank's result dict on every rank (torch.distributed.all_gather_object); alone: just this one."""
    _, _, world_size = world()
    if world_size == 1:
        return [result.as_dict()]
    import torch.distributed as dist

    ensure_distributed(device)
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, result.as_dict())
    return gathered


def run_probe(profile: Profile, plan: Plan, *, steps: int = 3, vram_cap_gib: float | None = None,
              device: str = "cuda", timeout_s: float | None = None, command: str | None = None,
              ds_config: dict[str, Any] | None = None,
              on_phase: Callable[[str, int | None], None] | None = None) -> dict[str, Any]:
    """Measure ``plan`` on ``profile`` for real and return a ``memplan.probe/1`` record.

    Under torchrun every rank measures itself and the per-rank results are all-gathered, so every
    rank returns the same record (rank 0 is the one that should write it). A failed rank in a
    multi-rank run would leave the others waiting in a collective: memplan.probe.launch handles that.
    """
    result = measure_rank(profile, plan, steps=steps, vram_cap_gib=vram_cap_gib, device=device, timeout_s=timeout_s,
                          ds_config=ds_config, on_phase=on_phase)
    torch_device = torch.device(result.device)
    ranks = gather_ranks(result, torch_device)
    return assemble_record(profile, plan, ranks, env=environment(torch_device, world()[2]),
                           vram_cap_gib=vram_cap_gib, command=command)


__all__ = ["run_probe", "measure_rank", "assemble_record", "gather_ranks", "release_distributed", "requested_bytes", "category_bytes", "Meter"]
