"""Where the free memory lay when an allocation failed: the caching allocator's segments at an OOM.

PyTorch's OOM message gives two totals, allocated and "reserved by PyTorch but unallocated". When the
request fails the allocator has already released every wholly free cached segment and retried
(c10/cuda/CUDACachingAllocator.cpp, release_cached_blocks), so the unallocated bytes that remain are free
blocks inside segments that still hold a live block: usable by a request only if one such block is as
large as it. The totals cannot say whether that was close. The layout can:
``torch.cuda.memory_snapshot()`` lists every segment and its blocks (state ``active_allocated``,
``active_pending_free`` or ``inactive``), and ``summarize_segments`` reduces it to what decides the
request: the largest free block, the free bytes stranded in live segments, and the segments at least as
large as the request with what is still live in them (the blocks that split them).

Taken by the allocator's out-of-memory observer (``watch_out_of_memory``:
``torch._C._cuda_attach_out_of_memory_observer``, which c10/cuda/CUDACachingAllocator.cpp calls when a request
fails, before the error is raised and the stack unwinds: the pattern of PyTorch's maintainers,
discuss.pytorch.org/t/183983), so the layout is the one the request met (``"when": "at the request"``). Where no
observer ran, ``run._file_failure`` reads it after the failure (``"when": "after unwinding"``): by then the
autograd engine has freed the buffers of the failing backward (on an H100, 4 GiB of a 15.7 GiB failure), so
that reading is labelled and is not the request's. Not on the CPU stand-in (no allocator): empty.
"""

from __future__ import annotations

from typing import Any

SHOWN_SEGMENTS = 4  # segments listed, largest first
SHOWN_BLOCKS = 3  # live blocks listed per segment, largest first
UNLABELLED = "read after unwinding: unlabelled, before 7b10529"  # the "when" of layouts recorded before the label


def _live(block: dict[str, Any]) -> bool:
    return block.get("state") != "inactive"


def summarize_segments(segments: list[dict[str, Any]], requested: int | None) -> dict[str, Any]:
    """{segments, reserved_bytes, allocated_bytes, free_in_live_segments_bytes, largest_free_block_bytes,
    large_segments} from ``torch.cuda.memory_snapshot()``'s segments of one device. ``large_segments``: the
    SHOWN_SEGMENTS largest segments of at least ``requested`` bytes (all segments when None), each with its
    size, live bytes, largest free block and its SHOWN_BLOCKS largest live blocks (bytes)."""
    free_in_live = largest_free = allocated = 0
    shown = []
    for segment in segments:
        blocks = segment.get("blocks") or []
        live = [block["size"] for block in blocks if _live(block)]
        free = [block["size"] for block in blocks if not _live(block)]
        allocated += sum(live)
        largest_free = max([largest_free, *free])
        if live:
            free_in_live += sum(free)
        if requested is None or segment["total_size"] >= requested:
            shown.append({"size_bytes": int(segment["total_size"]), "live_bytes": int(sum(live)),
                          "largest_free_bytes": int(max(free, default=0)),
                          "live_blocks_bytes": sorted((int(size) for size in live), reverse=True)[:SHOWN_BLOCKS]})
    shown.sort(key=lambda entry: entry["size_bytes"], reverse=True)
    return {"segments": len(segments), "reserved_bytes": int(sum(s["total_size"] for s in segments)),
            "allocated_bytes": int(allocated), "free_in_live_segments_bytes": int(free_in_live),
            "largest_free_block_bytes": int(largest_free), "large_segments": shown[:SHOWN_SEGMENTS]}


def fragmented(layout: dict[str, Any], requested: int | None) -> bool:
    """The request failed for want of one free block, not of free bytes: what sat free in live segments
    would have held it had it been one block (free_in_live_segments >= requested > largest free block)."""
    return bool(layout and requested and layout["free_in_live_segments_bytes"] >= requested
                and layout["largest_free_block_bytes"] < requested)


_AT_REQUEST: dict[str, Any] = {}  # the last observed failure's layout, taken by layout_at_failure
_WATCHING: list[bool] = []  # one observer per process (an attached observer cannot be detached)


def _device_segments(device: int) -> list[dict[str, Any]]:
    """torch.cuda.memory_snapshot()'s segments of one device."""
    import torch

    return [segment for segment in torch.cuda.memory_snapshot() if segment.get("device", device) == device]


def _oom_observer(device: int, requested: int, _device_allocated: int, _device_free: int) -> None:
    """The out-of-memory observer: the layout of ``device`` at the failing request."""
    try:
        segments = _device_segments(device)
        _AT_REQUEST.clear()
        _AT_REQUEST.update(summarize_segments(segments, int(requested)), when="at the request",
                           observed_request_bytes=int(requested))
    except Exception:  # noqa: BLE001 - an observer must never turn an OOM into another error
        _AT_REQUEST.clear()


def watch_out_of_memory() -> bool:
    """Attach the observer once per process (CUDA only); False where this torch has no such hook."""
    import torch

    if _WATCHING:
        return True
    attach = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
    if attach is None or not torch.cuda.is_available():
        return False
    attach(_oom_observer)
    _WATCHING.append(True)
    return True


def _same_request(observed: int, requested: int | None) -> bool:
    """The observed request is the failing one: the message prints its size to two decimals of its unit
    (run.requested_bytes), so within 1% (or unknown)."""
    return requested is None or abs(observed - requested) <= 0.01 * max(observed, requested)


def layout_at_failure(requested: int | None) -> dict[str, Any]:
    """The layout the failing request met (the observer's, when its request is this failure's), else
    summarize_segments of the current CUDA device now, labelled "after unwinding"; {} without CUDA or when the
    snapshot fails."""
    import torch

    if _AT_REQUEST:
        taken = dict(_AT_REQUEST)
        _AT_REQUEST.clear()
        if _same_request(taken["observed_request_bytes"], requested):
            return taken
        # an earlier failure that was caught and survived (a library's retry): not this one's layout
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    try:
        segments = _device_segments(torch.cuda.current_device())
    except (RuntimeError, AttributeError):  # a broken context after the failure: no layout, not a crash
        return {}
    return {**summarize_segments(segments, requested), "when": "after unwinding"}
