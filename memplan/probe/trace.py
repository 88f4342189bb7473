"""Record a probe's allocation trace (``memplan probe --trace-out FILE``) for memplan.planning.replay.

PyTorch keeps a history of the caching allocator's events once ``torch.cuda.memory._record_memory_history``
is on (c10/cuda/CUDACachingAllocator.cpp, record_trace: every ``alloc`` with the size asked for,
``free_requested``/``free_completed``, ``segment_alloc``/``segment_free``, ``oom``), and
``torch.cuda.memory._snapshot()["device_traces"]`` returns it. Recording starts before the probe builds
anything, with no stack capture (``context=None``: a few dozen bytes an entry), and a ring buffer large
enough for a probe's steps (``MAX_ENTRIES``; a full ring is flagged, since its oldest events are gone).

``entries_to_trace`` turns the entries into memplan.trace/1 columns: block ids for addresses, the free
completed (not requested) as the moment a block is reusable, and each run of ``segment_free`` outside an
OOM as one release of the cache (torch.cuda.empty_cache: the probe calls it between runs, DeepSpeed at
init). Pure Python, so it is tested on CPU with made-up entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from memplan.spec.trace import ALLOC, FREE, RELEASE, SEGMENT_ALLOC, SEGMENT_FREE, Trace, write_trace

MAX_ENTRIES = 20_000_000


def entries_to_trace(entries: Iterable[dict[str, Any]], header: dict[str, Any]) -> Trace:
    """memplan.trace/1 columns from torch's trace entries (dicts with action, addr, size, stream)."""
    kinds: list[str] = []
    addresses: list[int] = []
    blocks: list[int] = []
    sizes: list[int] = []
    streams: list[int] = []
    stream_index: dict[int, int] = {}
    live: dict[int, int] = {}
    unmatched = ooms = 0
    previous = None
    next_block = 0
    for entry in entries:
        action = entry.get("action")
        if action == "alloc":
            stream = stream_index.setdefault(int(entry.get("stream") or 0), len(stream_index))
            block, next_block = next_block, next_block + 1
            live[int(entry["addr"])] = block
            kinds.append(ALLOC), blocks.append(block), sizes.append(int(entry["size"])), streams.append(stream)
            addresses.append(int(entry["addr"]))
        elif action == "free_completed":
            block = live.pop(int(entry["addr"]), None)
            if block is None:
                unmatched += 1  # allocated before recording began
            else:
                kinds.append(FREE), blocks.append(block), sizes.append(0), streams.append(0), addresses.append(0)
        elif action == "segment_free" and previous != "segment_free":
            kinds.append(RELEASE), blocks.append(0), sizes.append(0), streams.append(0), addresses.append(0)
        if action in ("segment_alloc", "segment_free"):  # the driver's addresses, for study; the replay skips them
            kinds.append(SEGMENT_ALLOC if action == "segment_alloc" else SEGMENT_FREE)
            blocks.append(0), sizes.append(int(entry.get("size") or 0)), streams.append(0)
            addresses.append(int(entry.get("addr") or 0))
        elif action == "oom":
            ooms += 1
        previous = action
    header = {**header, "unmatched_frees": unmatched, "trace_ooms": ooms}
    ordered = sorted(stream_index, key=stream_index.get)
    return Trace(header=header, kinds="".join(kinds), blocks=blocks, sizes=sizes, streams=streams,
                 stream_ids=ordered or [0], addresses=addresses)


def start_recording() -> None:
    """Switch on the allocator's history (no stacks) before anything is allocated."""
    import torch

    torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python", max_entries=MAX_ENTRIES)


def outside_bytes(device: Any) -> int:
    """What lies on the device outside the caching allocator now (context, NCCL, workspaces)."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return max(int(total - free) - int(torch.cuda.memory_reserved(device)), 0)


def _measured(record: dict[str, Any]) -> dict[str, int]:
    """Rank 0's peaks over the record's phases: what an unlimited replay must reproduce."""
    phases = [phase for rank in record.get("ranks") or [] if rank.get("rank", 0) == 0
              for phase in (rank.get("phases") or {}).values() if isinstance(phase, dict)]

    def peak(key: str) -> int:
        return max((int(phase.get(key) or 0) for phase in phases), default=0)

    return {"max_reserved_bytes": peak("max_reserved_bytes"), "max_allocated_bytes": peak("max_allocated_bytes"),
            "num_alloc_retries": peak("alloc_retries")}


def finish_recording(path: Path, *, record: dict[str, Any], device: Any, outside: int,
                     process_group: bool) -> dict[str, Any]:
    """Take the history, switch recording off, write the trace to ``path``; the summary for the record."""
    import torch

    index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    entries = snapshot.get("device_traces", [])[index] if snapshot.get("device_traces") else []
    environment = record.get("environment") or {}
    header = {"run_id": record.get("run_id"), "model": record.get("model"), "plan": record.get("plan"),
              "status": record.get("status"), "gpu_name": environment.get("gpu_name"),
              "device_total_bytes": environment.get("gpu_total_bytes"), "alloc_conf": environment.get("alloc_conf"),
              "torch": environment.get("torch"), "vram_cap_bytes": record.get("vram_cap_bytes"),
              "start_context_bytes": (record.get("ranks") or [{}])[0].get("context_bytes"),
              "outside_bytes": outside, "process_group": process_group, "measured": _measured(record),
              "ring_full": len(entries) >= MAX_ENTRIES}
    trace = entries_to_trace(entries, header)
    write_trace(path, trace)
    return {"path": str(path), "events": len(trace), "requests": trace.requests,
            "unmatched_frees": trace.header["unmatched_frees"], "ring_full": header["ring_full"]}
