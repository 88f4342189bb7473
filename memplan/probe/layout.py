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

Taken in ``run._file_failure`` while the exception still holds the failing frames (their tensors are
alive), so the layout is the one the request met. Not on the CPU stand-in (no allocator): empty.
"""

from __future__ import annotations

from typing import Any

SHOWN_SEGMENTS = 4  # segments listed, largest first
SHOWN_BLOCKS = 3  # live blocks listed per segment, largest first


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


def layout_at_failure(requested: int | None) -> dict[str, Any]:
    """summarize_segments of the current CUDA device now; {} without CUDA or when the snapshot fails."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    try:
        device = torch.cuda.current_device()
        segments = [s for s in torch.cuda.memory_snapshot() if s.get("device", device) == device]
    except (RuntimeError, AttributeError):  # a broken context after the failure: no layout, not a crash
        return {}
    return summarize_segments(segments, requested)
