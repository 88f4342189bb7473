"""``memplan probe --fake-world N``: rank 0 of an N-rank job, measured on one device.

The run joins PyTorch's fake process group (torch.testing._internal.distributed.fake_pg: FakeStore
and backend "fake", whose collectives complete at once and move no data) as rank 0 of N, then trains
the plan with FSDP2 as a real rank would (memplan.probe.fsdp). Every buffer FSDP2 allocates has its
real N-rank size, so the allocator's peak is the per-rank peak of an N-GPU job; what is wrong is only
the values (nothing was gathered or reduced) and the time.

DeepSpeed (ZeRO-1/2/3, bf16) runs on the same fake group: deepspeed.comm finds torch.distributed
initialised and uses it (deepspeed/comm/comm.py, init_distributed). fp16 is refused: its loss scaler
would skip steps on the overflow that ungathered values cause. This module imports torch only
inside run_fake_world.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from memplan.spec.loading import InputError
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile


FAKE_WORLD_ENV = "MEMPLAN_FAKE_WORLD"


def fake_world_size() -> int | None:
    """N from MEMPLAN_FAKE_WORLD (None when unset: a real world)."""
    value = os.environ.get(FAKE_WORLD_ENV)
    return int(value) if value else None


def init_fake_world(world_size: int) -> None:
    """Join a fake process group as rank 0 of ``world_size`` (no other process exists)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        return
    os.environ["RANK"] = os.environ["LOCAL_RANK"] = "0"  # DeepSpeed reads LOCAL_RANK (deepspeed/comm/comm.py)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)


def check_fake_world(plan: Plan, world_size: int, *, deepspeed_config: Path | None = None) -> None:
    """The fake world runs FSDP2 or DeepSpeed training plans whose hardware says N GPUs in all."""
    if plan.engine.kind == "pytorch":
        raise InputError(f"--fake-world={world_size}: needs engine.kind=fsdp2 or deepspeed, not pytorch "
                         "(DDP replicates everything: its per-rank memory is that of one GPU)")
    if plan.engine.kind == "deepspeed" and plan.precision.compute == "fp16":
        raise InputError(f"--fake-world={world_size}: DeepSpeed with fp16 skips steps on the overflow the "
                         "ungathered values cause (no optimizer state would be made); use bf16")
    if deepspeed_config is not None:
        raise InputError(f"--deepspeed-config={deepspeed_config}: not with --fake-world (an FSDP2 run)")
    if plan.hardware.num_gpus != world_size:
        raise InputError(f"--fake-world={world_size}: hardware.num_gpus={plan.hardware.num_gpus} "
                         f"(nodes {plan.hardware.nodes} x {plan.hardware.gpus_per_node}) must equal it")
    if plan.mode != "train":
        raise InputError(f"--fake-world={world_size}: mode={plan.mode}; the fake world measures training")


def run_fake_world(profile: Profile, plan: Plan, *, world_size: int, steps: int = 3,
                   vram_cap_gib: float | None = None, device: str = "cuda", timeout_s: float | None = None,
                   command: str | None = None) -> dict[str, Any]:
    """Measure rank 0 of ``world_size`` in this process; the record carries ``fake_world``."""
    from memplan.probe.distributed import release_distributed
    from memplan.probe.run import run_probe

    # init_fake_world sets RANK/LOCAL_RANK: restore them, or a later Trainer/accelerate in this
    # process reads RANK and tries an env:// rendezvous
    previous = {name: os.environ.get(name) for name in (FAKE_WORLD_ENV, "RANK", "LOCAL_RANK")}
    os.environ[FAKE_WORLD_ENV] = str(world_size)
    try:
        record = run_probe(profile, plan, steps=steps, vram_cap_gib=vram_cap_gib, device=device,
                           timeout_s=timeout_s, command=command)
    finally:
        release_distributed()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    record["fake_world"] = world_size
    record["notes"] = [*record.get("notes", []), f"fake world: rank 0 of {world_size} measured alone; "
                       "collectives were no-ops (sizes real, values not)"]
    return record
