"""What no formula derives: allocator rounding/fragmentation and the CUDA context.

These few terms are fitted by `memplan calibrate` on real probe records and stored in
profiles/calibration.yaml (schema memplan.calibration/1). Until calibrated, the defaults below
hold (the caching allocator's 2 MiB rounding of large blocks, c10/cuda/CUDACachingAllocator.cpp
kRoundLarge; a CUDA 12/13 context with cuBLAS kernels loaded, about 0.5 GiB on Hopper).
"""

from __future__ import annotations

from memplan.spec.calibration import CALIBRATION_SCHEMA, DEFAULT, Calibration  # noqa: F401 (re-exported)

# Under expandable segments, what PyTorch's OOM message reports as "reserved by PyTorch but unallocated"
# at the failing request: the median of the 4 runs of h200-batch9 that ran out (292-315 MiB; sa2va-1b and
# sa2va-internvl3-2b, plain PyTorch and ZeRO-2, one H200 under --vram-cap rtx-3090). Measured, in-sample
# for h200-batch9 (added after its runs; tests/test_allocator.py recomputes it from the records).
EXPANDABLE_STRANDED_BYTES = 313_744_425


def reserved_bytes(calibration: Calibration, peak_allocated: int) -> int:
    """Reserved peak = allocated peak x (1 + ratio) + constant (fitted)."""
    return int(peak_allocated * (1 + calibration.reserved_ratio)) + calibration.reserved_constant_bytes


def uses_nccl(num_gpus: int, is_deepspeed: bool) -> bool:
    """A NCCL communicator exists with several GPUs, and under DeepSpeed even on one (deepspeed.initialize
    sets up its process group): H100 probes read device - reserved = 0.75 GiB for plain PyTorch on one
    GPU and 1.6-1.8 GiB for DeepSpeed or several GPUs (reports/probes/)."""
    return num_gpus > 1 or is_deepspeed


def device_bytes(calibration: Calibration, peak_reserved: int, *, num_gpus: int, is_deepspeed: bool = False,
                 nccl_extra_bytes: int = 0) -> int:
    """nvidia-smi view: reserved + CUDA context (+ NCCL's communicator buffers, see uses_nccl; + the
    extra communicators and inter-node buffers of memplan.estimate.multinode)."""
    nccl = calibration.nccl_bytes + nccl_extra_bytes if uses_nccl(num_gpus, is_deepspeed) else 0
    return peak_reserved + calibration.context_bytes + nccl


def needed_bytes(calibration: Calibration, peak_allocated: int, largest_block: int, *, device: int, num_gpus: int,
                 is_deepspeed: bool = False, nccl_extra_bytes: int = 0, expandable: bool = False) -> int:
    """Device memory a run needs not to run out:
    allocated x (1 + pressure_ratio) + pressure_block x largest block + context (+ NCCL);
    under expandable segments (``expandable`` = stack.allocator expandable_segments):
    allocated + stranded (EXPANDABLE_STRANDED_BYTES) + context (+ NCCL).

    When cudaMalloc fails or the memory fraction is reached, PyTorch's caching allocator releases its
    cached unused segments and retries (c10/cuda/CUDACachingAllocator.cpp, release_cached_blocks), so
    only segments holding a live block count against the card. What stays stranded in them: a small
    share of everything allocated, and part of the largest block (the fp32 logits), whose freed
    segment the allocator splits to serve smaller requests. Without a fitted pressure_ratio: the
    device view (reserved + context + NCCL).

    Expandable segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True) map physical pages into one
    virtual segment per stream and pool, so freed neighbours always merge, and release_cached_blocks
    unmaps every whole free page before the retry (CUDACachingAllocator.cpp, ExpandableSegment::unmap;
    the fraction check in alloc_block counts mapped bytes). What stays stranded is parts of the pages
    at the edges of live blocks (20 MiB large, 2 MiB small): first taken as none (after h200-batch8,
    whose 9 runs all fitted), which h200-batch9's pre-registered run at 0.992 of the card disproved
    (it ran out with 292 MiB reserved but unallocated); since then the measured constant."""
    nccl = calibration.nccl_bytes + nccl_extra_bytes if uses_nccl(num_gpus, is_deepspeed) else 0
    if expandable:
        return peak_allocated + EXPANDABLE_STRANDED_BYTES + calibration.context_bytes + nccl
    if calibration.pressure_ratio is None:
        return device
    return (int(peak_allocated * (1 + calibration.pressure_ratio)) + int(calibration.pressure_block * largest_block)
            + calibration.context_bytes + nccl)


def card_views(calibration: Calibration, peak_allocated: int, largest_block: int, *, num_gpus: int,
               is_deepspeed: bool = False, nccl_extra_bytes: int = 0, expandable: bool = False) -> tuple[int, int, int]:
    """(reserved, device, needed) for an allocated peak: the three views above, in one place.
    ``is_deepspeed``: the engine sets up a process group even on one GPU (DeepSpeed, FSDP2);
    ``expandable``: expandable segments (needed_bytes). The reserved and device views are the
    default allocator's fit either way (not refitted for expandable segments)."""
    reserved = reserved_bytes(calibration, peak_allocated)
    device = device_bytes(calibration, reserved, num_gpus=num_gpus, is_deepspeed=is_deepspeed,
                          nccl_extra_bytes=nccl_extra_bytes)
    return reserved, device, needed_bytes(calibration, peak_allocated, largest_block, device=device,
                                          num_gpus=num_gpus, is_deepspeed=is_deepspeed, nccl_extra_bytes=nccl_extra_bytes,
                                          expandable=expandable)

