"""torchrun and process-group setup for the probe: the rank triple, the device, init, gather, release.

One process per GPU under torchrun (RANK, LOCAL_RANK, WORLD_SIZE in the environment); alone, a local
rendezvous on a free port. NCCL on CUDA (bound to the rank's device), gloo on the CPU. torch is
imported inside the functions, so the fault hook can read the rank before torch loads.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def resolve_device(device: str, local_rank: int) -> torch.device:
    """``cuda`` -> this rank's GPU (made current), anything else -> the CPU."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda: no CUDA device is visible (use --device cpu)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_distributed(device: torch.device) -> None:
    """Initialise torch.distributed (single process: a local rendezvous) if it is not yet."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from memplan.probe.fake_world import fake_world_size, init_fake_world

    if fake_world_size():  # memplan probe --fake-world N: rank 0 of N on a fake process group
        return init_fake_world(fake_world_size())
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, **kwargs)


def release_distributed() -> None:
    """Destroy the process group this process started (a clean exit for single-process runs)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(value: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """Every rank's ``value`` on every rank (torch.distributed.all_gather_object); alone: ``[value]``."""
    _, _, world_size = world()
    if world_size == 1:
        return [value]
    import torch.distributed as dist

    ensure_distributed(device)
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered
