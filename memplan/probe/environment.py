"""Where a probe ran: the card, its driver, the library versions, the host (the record's ``environment``).

torch is imported inside ``environment`` only, so the launcher's parent (which never imports torch)
can fill the same keys with ``fallback_environment`` when no rank reported.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from typing import Any

from memplan.probe.hostinfo import HOST_FACTS, host_facts

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


def environment(device: Any, world_size: int) -> dict[str, Any]:
    """GPU name and memory, driver, CUDA, torch and library versions, python, host, world size."""
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
    }


def fallback_environment(world_size: int) -> dict[str, Any]:
    """The same keys with nothing measured but the host (no rank saved its environment)."""
    return {"gpu_name": None, "gpu_total_bytes": None, "driver": None, "cuda": None, "torch": None,
            **{library: None for library in LIBRARIES}, **_host(world_size), **dict.fromkeys(HOST_FACTS)}


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
