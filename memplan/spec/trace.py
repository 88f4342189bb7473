"""A probe's allocation trace (schema memplan.trace/1): every request a training run made of the CUDA
caching allocator, in order, so that memplan.planning.replay can replay it against any card.

``memplan probe --trace-out FILE`` writes it from ``torch.cuda.memory._snapshot()["device_traces"]``
(memplan.probe.trace). The file is gzip-compressed JSON:

    {"schema": "memplan.trace/1", "run_id", "model", "gpu_name", "device_total_bytes", "alloc_conf",
     "start_context_bytes", "outside_bytes", "process_group", "measured": {max_reserved_bytes,
     max_allocated_bytes, num_alloc_retries, num_ooms}, "unmatched_frees", "ring_full",
     "events": {"kind": "afr...", "block": [...], "size": [...], "stream": [...]}, "streams": [...]}

``kind`` is one character per event: ``a`` a request (``block`` a new id, ``size`` its bytes as asked,
``stream`` an index into ``streams``), ``f`` the block's free completed (the moment it is reusable),
``r`` a release of the cached segments (torch.cuda.empty_cache, seen as segment frees), ``S``/``D`` the real
allocator's segment allocations and frees (size and address, kept for study; the replay skips them). Block
ids stand for addresses, which a replay does not reproduce; the optional ``address`` column keeps the real
ones. Pure: no torch.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memplan.spec.errors import InputError

TRACE_SCHEMA = "memplan.trace/1"
ALLOC, FREE, RELEASE = "a", "f", "r"
SEGMENT_ALLOC, SEGMENT_FREE = "S", "D"  # the real allocator's cudaMalloc / cudaFree (size, address): not replayed
KINDS = {ALLOC, FREE, RELEASE, SEGMENT_ALLOC, SEGMENT_FREE}


@dataclass
class Trace:
    """A trace in memory: the header and the event columns (see the module docstring)."""

    header: dict[str, Any]
    kinds: str
    blocks: list[int]
    sizes: list[int]
    streams: list[int]
    stream_ids: list[int] = field(default_factory=lambda: [0])
    addresses: list[int] | None = None  # the real address of each request and segment event (None: not kept)

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def requests(self) -> int:
        return self.kinds.count(ALLOC)


def trace_document(trace: Trace) -> dict[str, Any]:
    events = {"kind": trace.kinds, "block": trace.blocks, "size": trace.sizes, "stream": trace.streams}
    if trace.addresses is not None:
        events["address"] = trace.addresses
    return {**trace.header, "schema": TRACE_SCHEMA, "streams": trace.stream_ids, "events": events}


def write_trace(path: Path, trace: Trace) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump(trace_document(trace), handle, separators=(",", ":"))


def _fail(path: Path, message: str) -> InputError:
    return InputError(f"trace={path}: {message}")


def read_trace(path: Path) -> Trace:
    """A trace file, checked: one-line InputError naming the file and what is wrong."""
    if not path.is_file():
        raise _fail(path, "no such file (write one with `memplan probe --trace-out FILE`)")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(path, f"not a gzip-compressed JSON trace ({type(error).__name__})") from None
    if not isinstance(document, dict) or document.get("schema") != TRACE_SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise _fail(path, f"schema={found!r}: expected {TRACE_SCHEMA!r}")
    events = document.get("events")
    columns = ("kind", "block", "size", "stream")
    if not isinstance(events, dict) or any(key not in events for key in columns):
        raise _fail(path, f"events: must hold the columns {', '.join(columns)}")
    kinds, blocks, sizes, streams = (events[key] for key in columns)
    if not isinstance(kinds, str) or set(kinds) - KINDS:
        raise _fail(path, f"events.kind: must be a string of {', '.join(sorted(KINDS))}")
    lengths = {len(kinds), len(blocks), len(sizes), len(streams)}
    if len(lengths) != 1:
        raise _fail(path, f"events: columns of different lengths {sorted(lengths)}")
    if any(not isinstance(value, int) or value < 0 for column in (blocks, sizes, streams) for value in column):
        raise _fail(path, "events: block, size and stream must be non-negative integers")
    stream_ids = document.get("streams") or [0]
    if streams and max(streams) >= len(stream_ids):
        raise _fail(path, f"events.stream: index {max(streams)} but {len(stream_ids)} streams listed")
    header = {key: value for key, value in document.items() if key not in ("events", "streams")}
    addresses = events.get("address")
    if addresses is not None and len(addresses) != len(kinds):
        raise _fail(path, "events.address: not one per event")
    return Trace(header=header, kinds=kinds, blocks=blocks, sizes=sizes, streams=streams, stream_ids=stream_ids,
                 addresses=addresses)
