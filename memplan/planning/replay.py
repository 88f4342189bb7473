"""A recorded run replayed against other cards: does the step fit, under which allocator settings.

A probe on any card large enough to run the plan records its allocation trace (``memplan probe
--trace-out``, memplan.spec.trace). A program's requests do not depend on the card or the allocator's
settings (the same sizes in the same order: h100-repeat-a gave the same bytes on every repeat), so one
trace answers for every card: memplan.estimate.caching_allocator serves the requests under the card's
allocator limit and reports the first one it cannot.

The limit is what ``memplan probe --vram-cap`` gives the allocator (memplan.probe.cap.DeviceCap):

    limit = CUDA-visible total - the card family's context - NCCL (a catalogued card)
    limit = cap - what lay outside the allocator on the probing card (a cap in GiB)

with NCCL = max(outside - max(start context, family context), 0) when the run had a process group
(DeepSpeed, even on one GPU), else 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.estimate.caching_allocator import CachingAllocator, Failure
from memplan.spec.allocator import ENV, EXPANDABLE, allocator_of, conf_options
from memplan.spec.cards import VramCap
from memplan.spec.errors import InputError
from memplan.spec.trace import ALLOC, FREE, RELEASE, SEGMENT_ALLOC, Trace
from memplan.spec.units import MIB

SMALLEST_LIMIT_RESOLUTION = 32 * MIB  # the bisection for the smallest limit stops at this width
FIDELITY_TOLERANCE = 0.01  # an unlimited replay's peak reserved within 1% of the run's: the replay reproduces it


@dataclass(frozen=True)
class Replay:
    """One replay: the limit, the allocator setting, and what came of it."""

    limit_bytes: int | None
    max_split_bytes: int | None
    fits: bool
    peak_reserved_bytes: int
    peak_allocated_bytes: int
    requests_served: int
    failure: Failure | None = None

    @property
    def setting(self) -> str:
        return setting_label(self.max_split_bytes)


def setting_label(max_split_bytes: int | None) -> str:
    """``default``, or ``max_split_size_mb:N`` as PYTORCH_CUDA_ALLOC_CONF spells it."""
    return "default" if max_split_bytes is None else f"max_split_size_mb:{max_split_bytes // MIB}"


def recorded_addresses(trace: Trace) -> dict[int, list[int]] | None:
    """The driver's address of each segment the traced run got, per size in order (None: the trace kept none).
    The allocator breaks ties between equal-sized free blocks by address; with these, the unlimited replay of
    replay-a4's Trainer InternVL plan went from 0.76% under the run's peak reserved to the byte, and its capped
    replay from OOM to the capped runs' peak reserved, to the byte (found on that plan: in-sample)."""
    if trace.addresses is None:
        return None
    recorded: dict[int, list[int]] = {}
    for kind, size, address in zip(trace.kinds, trace.sizes, trace.addresses):
        if kind == SEGMENT_ALLOC:
            recorded.setdefault(size, []).append(address)
    return recorded or None


def replay(trace: Trace, *, limit_bytes: int | None, max_split_bytes: int | None = None) -> Replay:
    """Serve the trace's requests in order under ``limit_bytes`` (None: unlimited); stops at the first
    request the allocator cannot serve. Segments take the driver's recorded addresses where the trace has
    them (recorded_addresses)."""
    allocator = CachingAllocator(limit_bytes=limit_bytes, max_split_bytes=max_split_bytes,
                                 recorded_addresses=recorded_addresses(trace))
    live: dict[int, object] = {}
    served = 0
    streams = trace.stream_ids
    for kind, block_id, size, stream in zip(trace.kinds, trace.blocks, trace.sizes, trace.streams):
        if kind == ALLOC:
            block = allocator.malloc(size, streams[stream])
            if block is None:
                break
            live[block_id] = block
            served += 1
        elif kind == FREE:
            block = live.pop(block_id, None)
            if block is not None:
                allocator.free(block)
        elif kind == RELEASE:
            allocator.release_cached_blocks()
    return Replay(limit_bytes=limit_bytes, max_split_bytes=max_split_bytes, fits=allocator.failure is None,
                  peak_reserved_bytes=allocator.peak_reserved_bytes,
                  peak_allocated_bytes=allocator.peak_allocated_bytes, requests_served=served,
                  failure=allocator.failure)


def smallest_limit(trace: Trace, *, max_split_bytes: int | None = None,
                   resolution_bytes: int = SMALLEST_LIMIT_RESOLUTION, unlimited: Replay | None = None) -> int:
    """The smallest allocator limit (to ``resolution_bytes``) under which the trace replays to its end,
    by bisection between its peak allocated bytes (below which nothing fits) and its unlimited peak
    reserved (at which it fits). Fitting is assumed monotone in the limit; the verdict for a card is its
    own replay, not this number. ``unlimited``: the trace's unlimited replay under this setting, when the
    caller has it (fidelity's, for the default allocator)."""
    if unlimited is None or unlimited.limit_bytes is not None or unlimited.max_split_bytes != max_split_bytes:
        unlimited = replay(trace, limit_bytes=None, max_split_bytes=max_split_bytes)
    low, high = unlimited.peak_allocated_bytes - 1, unlimited.peak_reserved_bytes
    while high - low > resolution_bytes:
        middle = (low + high) // 2
        if replay(trace, limit_bytes=middle, max_split_bytes=max_split_bytes).fits:
            high = middle
        else:
            low = middle
    return high


def allocator_limit(trace: Trace, cap: VramCap) -> int:
    """What the allocator may reserve on ``cap`` (module docstring): the cap less the context (the
    card family's, or the probing card's outside bytes for a cap in GiB) and NCCL."""
    header = trace.header
    outside = int(header.get("outside_bytes") or 0)
    if cap.context_bytes is None:
        return cap.cap_bytes - outside
    nccl = 0
    if header.get("process_group"):
        nccl = max(outside - max(int(header.get("start_context_bytes") or 0), cap.context_bytes), 0)
    return cap.cap_bytes - cap.context_bytes - nccl


def max_split_bytes_of(alloc_conf: str) -> int:
    """max_split_size_mb of a PYTORCH_CUDA_ALLOC_CONF value (``max_split_size_mb:512``) in bytes; the
    allocator refuses values not above 20 MiB (CUDAAllocatorConfig.cpp, parseMaxSplitSize)."""
    value = conf_options(alloc_conf).get("max_split_size_mb")
    if value is not None and value.isdigit():
        if int(value) <= 20:
            raise InputError(f"{ENV}={alloc_conf}: max_split_size_mb must be above 20 (MiB)")
        return int(value) * MIB
    raise InputError(f"--alloc-conf={alloc_conf}: give max_split_size_mb:N (N in MiB, above 20); "
                     "other allocator options are not replayed")


def fidelity(trace: Trace) -> tuple[Replay, int | None]:
    """The unlimited replay and the peak reserved the run measured (None when the trace has none, or when
    the run used expandable segments, which this replay does not model)."""
    unlimited = replay(trace, limit_bytes=None)
    measured = (trace.header.get("measured") or {}).get("max_reserved_bytes")
    if allocator_of(trace.header.get("alloc_conf")) == EXPANDABLE:
        measured = None
    return unlimited, (int(measured) if measured else None)


def reproduces(unlimited: Replay, measured: int | None) -> bool | None:
    """Whether the unlimited replay's peak reserved is within FIDELITY_TOLERANCE of the run's."""
    if measured is None:
        return None
    return abs(unlimited.peak_reserved_bytes - measured) <= FIDELITY_TOLERANCE * measured
