"""Where a probe ran: the card, its driver, the library versions, the host (the record's ``environment``).

torch is imported inside ``environment`` only, so the launcher's parent (which never imports torch)
can fill the same keys with ``fallback_environment`` when no rank reported.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from typing import Any

from memplan.probe.hostinfo import HOST_FACTS, HOST_LOAD, host_facts, host_load

LIBRARIES = ("transformers", "peft", "accelerate", "deepspeed")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    """The NVIDIA driver version, from ``nvidia-smi --query-gpu=driver_version``."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _host(world_size: int) -> dict[str, Any]:
    """Python, host, world size, and the caching allocator's settings (PYTORCH_CUDA_ALLOC_CONF, e.g.
    expandable_segments:True; None: PyTorch's defaults), which decide how much of a full card is usable."""
    return {"python": platform.python_version(), "hostname": socket.gethostname(), "world_size": world_size,
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}


DISPATCH_KEYS = ("host_op_us", "host_module_us")
HOST_RATE_KEYS = ("host_adam_mparams_s", "host_threads")
BEFORE_RUN_KEYS = DISPATCH_KEYS + HOST_RATE_KEYS + HOST_LOAD  # measured before the model and the engine exist


def host_dispatch_us(*, calls: int = 5_000, repeats: int = 5) -> dict[str, float]:
    """The host's per-call cost of PyTorch dispatch, in microseconds (best of ``repeats`` loops of ``calls``):
    ``host_op_us`` for one ``torch.add(a, b, out=c)`` on 1-element CPU tensors (Python -> ATen dispatch),
    ``host_module_us`` for one ``nn.Linear(4, 4)`` call on a 1x4 tensor (``Module.__call__``, its hooks
    check and an addmm). The step-time model's framework term (module calls x module_call_s) is this kind
    of host time, and it differed between machines with the same card (docs/benchmarks.md, 2026-12-06):
    the records carry it so that the term can be related to the host. CPU only: no GPU memory is touched.
    Measure it before the model and the engine exist (``environment(before=before_run())``): after a DeepSpeed
    ZeRO-3 run the same loop measured about 29 us per module call against 5 us after ZeRO-1/2 and plain
    PyTorch on the same machine (reports/probes/h100-batch11.jsonl, h100-steptime-e.jsonl). About 0.1 s."""
    import torch

    a, b, c = torch.ones(1), torch.ones(1), torch.empty(1)
    linear, x = torch.nn.Linear(4, 4), torch.ones(1, 4)

    def best(call: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                call()
            times.append(time.perf_counter() - start)
        return round(min(times) / calls * 1e6, 3)

    with torch.no_grad():
        return {"host_op_us": best(lambda: torch.add(a, b, out=c)), "host_module_us": best(lambda: linear(x))}


def host_adam_rate(*, elements: int = 1 << 23, repeats: int = 3) -> dict[str, Any]:
    """How fast this host updates fp32 parameters with Adam, in millions of parameters per second (best of
    ``repeats``), with torch's intra-op threads (``host_threads``: torch.get_num_threads()). One update reads and
    writes the parameter, m and v and reads the gradient (torch.optim.Adam's single-tensor step: exp_avg.lerp_,
    exp_avg_sq.mul_().addcmul_(), param.addcdiv_()), so like DeepSpeed's CPU Adam (deepspeed/ops/adam/
    cpu_adam.py, one OpenMP thread per core) it is bound by host memory bandwidth and cores: the step-time
    model's cpu_adam term is this kind of host time, and records without it could not tell whether a host-bound
    step was slow for the host's sake (docs/benchmarks.md, sets j and n). CPU only, 4 x ``elements`` fp32
    (128 MiB by default, freed after); about 0.2 s."""
    import torch

    param, grad, m, v = (torch.rand(elements) for _ in range(4))
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first pass pages the tensors in
            start = time.perf_counter()
            m.lerp_(grad, 0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            param.addcdiv_(m, v.sqrt().add_(1e-8), value=-1e-4)
            times.append(time.perf_counter() - start)
    return {"host_adam_mparams_s": round(elements / min(times[1:]) / 1e6, 1), "host_threads": torch.get_num_threads()}


def before_run() -> dict[str, Any]:
    """What the probe measures of the host before the model and the engine exist: the dispatch cost
    (host_dispatch_us), the Adam update rate (host_adam_rate) and the load (memplan.probe.hostinfo.host_load,
    read first: the other two are the probe's own work); BEFORE_RUN_KEYS."""
    load = host_load()
    return {**host_dispatch_us(), **host_adam_rate(), **load}


def environment(device: Any, world_size: int, *, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """GPU name and memory, driver, CUDA, torch and library versions, python, host, world size, and the
    host's dispatch cost and load (``before``: before_run() as measured before the run; measured here when
    not given)."""
    import torch

    cuda = device.type == "cuda"
    return {
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_total_bytes": int(torch.cuda.get_device_properties(device).total_memory) if cuda else None,
        "driver": _driver_version() if cuda else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        **{library: _version(library) for library in LIBRARIES},
        **_host(world_size),
        **host_facts(),  # host_cpus, gpu_link, pcie_gen, pcie_width, cpu_model (memplan.probe.hostinfo)
        **(before if before is not None else before_run()),
    }


def fallback_environment(world_size: int) -> dict[str, Any]:
    """The same keys with nothing measured but the host (no rank saved its environment)."""
    return {"gpu_name": None, "gpu_total_bytes": None, "driver": None, "cuda": None, "torch": None,
            **{library: None for library in LIBRARIES}, **_host(world_size), **dict.fromkeys(HOST_FACTS),
            **dict.fromkeys(BEFORE_RUN_KEYS)}


def apply_allocator(plan: Any) -> Any:
    """The plan as the probe will run it, with PyTorch's allocator set to match (before any CUDA use):
    a plan that asks for expandable segments gets ``expandable_segments:True`` added to
    PYTORCH_CUDA_ALLOC_CONF (inherited by torchrun's ranks; set in the allocator too where CUDA has
    already started, torch.cuda.memory._set_allocator_settings); a caller whose environment already
    sets it runs that way, and the plan recorded says so. The record measures what ran."""
    import sys

    from memplan.spec.allocator import ENV, EXPANDABLE, allocator_of, conf_with_allocator

    current = os.environ.get(ENV)
    if allocator_of(current) == EXPANDABLE and plan.stack.allocator != EXPANDABLE:
        return plan.model_copy(update={"stack": plan.stack.model_copy(update={"allocator": EXPANDABLE})})
    wanted = conf_with_allocator(current, plan.stack.allocator)
    if wanted != current and wanted is not None:
        os.environ[ENV] = wanted
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.memory._set_allocator_settings(f"{EXPANDABLE}:True")
    return plan
