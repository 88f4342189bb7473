#!/usr/bin/env python3
"""Where the free memory lay at each recorded OOM: the allocator layout the probe keeps (memplan.probe.layout).

    python benchmarks/oom_layout.py reports/probes/h100-layout-a.jsonl [more.jsonl ...]

One block per OOM record that carries ``oom.layout``: the request, what was allocated and reserved, the free
bytes stranded in segments that still hold a live block, the largest free block (the request failed because it
was smaller), and the segments at least as large as the request with the live blocks that split them (GiB).
Records without a layout (before 2026-12-07, or no OOM) are counted, not shown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memplan.probe.layout import UNLABELLED
from memplan.probe.records import read_records

GIB = 2**30


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def describe(record: dict) -> list[str]:
    """The lines of one OOM record with a layout."""
    oom = record["oom"]
    layout = oom["layout"]
    name = record.get("run_key") or record["run_id"]
    lines = [f"{name}: {oom['phase']} step {oom.get('step')}, requested {gib(oom.get('requested_bytes'))} GiB; "
             f"allocated {gib(layout['allocated_bytes'])}, reserved {gib(layout['reserved_bytes'])} in "
             f"{layout['segments']} segments; free in live segments {gib(layout['free_in_live_segments_bytes'])}, "
             f"largest free block {gib(layout['largest_free_block_bytes'])} "
             f"({layout.get('when', UNLABELLED)})"]
    for segment in layout["large_segments"]:
        blocks = ", ".join(gib(size) for size in segment["live_blocks_bytes"])
        lines.append(f"    segment {gib(segment['size_bytes'])}: live {gib(segment['live_bytes'])} "
                     f"(largest live blocks {blocks}), largest free {gib(segment['largest_free_bytes'])}")
    if not layout["large_segments"]:
        lines.append("    no segment as large as the request")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    args = parser.parse_args()
    shown = skipped = 0
    for path in args.records:
        for record in read_records(path):
            if record.get("status") == "oom" and (record.get("oom") or {}).get("layout"):
                print("\n".join(describe(record)))
                shown += 1
            else:
                skipped += 1
    print(f"{shown} OOM records with a layout; {skipped} other records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
