#!/usr/bin/env python3
"""The floor under any step-time model: how far one plan's steady step moves between runs.

    python benchmarks/steptime_repeats.py [reports/probes/*.jsonl ...]

Groups every record with a steady step time (memplan.planning.stepfit.timed_runs: fake worlds and failed
runs left out) by card, probe command without its --out/--timeout/--steps/--device (the same plan, the same
flags) and allocator setting, and prints each plan that ran more than once: its steady steps, the batches they
came from, and max/min. A model that predicted every plan's mean exactly would still be off by about half of
max/min - 1 on a single run; that spread is measurement, not model. Pure reading: no estimate is involved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from memplan.planning.stepfit import timed_runs
from memplan.probe.records import read_records

ROOT = Path(__file__).resolve().parents[1]
NOT_THE_PLAN = ("--out", "--timeout", "--steps", "--device")  # flags that do not change what is trained


def plan_command(command: str) -> str:
    """A probe command as its sorted flags (``--flag value`` pairs and bare switches), without the leading
    `memplan probe` and without the flags that do not change the plan (NOT_THE_PLAN): two runs of one plan
    written in another order get one key. A command that is not a plain `memplan probe` (benchmarks/profile_step.py
    wraps it, and its last step runs under torch.profiler) gives "" and is left out."""
    if not command.startswith("memplan probe "):
        return ""
    words, pairs, index = command.split()[2:], [], 0
    while index < len(words):
        flag = words[index]
        value = words[index + 1] if index + 1 < len(words) and not words[index + 1].startswith("--") else None
        index += 2 if value is not None else 1
        if flag not in NOT_THE_PLAN:
            pairs.append(flag if value is None else f"{flag} {value}")
    return " ".join(sorted(pairs))


def repeated(paths: list[Path]) -> list[dict]:
    """[{card, command, alloc_conf, runs: [(steady_s, batch file stem)]}] for each plan timed more than once
    (each run id once, whichever file repeats it)."""
    records: dict[str, tuple[dict, str]] = {}
    for path in paths:
        for record in read_records(path):
            records.setdefault(str(record.get("run_id")), (record, path.stem))
    runs, _ = timed_runs([record for record, _ in records.values()])
    groups: dict[tuple, list] = defaultdict(list)
    for run in runs:
        record, stem = records[run.run_id]
        key = (run.device or "", plan_command(record.get("command") or ""), (record.get("environment") or {}).get("alloc_conf"))
        groups[key].append((run.measured_s, stem))
    return [{"card": card, "command": command, "alloc_conf": conf, "runs": sorted(members, key=lambda m: m[1])}
            for (card, command, conf), members in sorted(groups.items(), key=lambda item: str(item[0]))
            if len(members) > 1 and command]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="*", type=Path)
    paths = parser.parse_args().records or sorted((ROOT / "reports" / "probes").glob("*.jsonl"))
    spreads = []
    for group in repeated(paths):
        steps = [seconds for seconds, _ in group["runs"]]
        spreads.append(max(steps) / min(steps))
        runs = ", ".join(f"{seconds:.3f} s ({stem})" for seconds, stem in group["runs"])
        print(f"{group['card']}: {group['command']}: max/min {spreads[-1]:.2f}: {runs}")
    if spreads:
        print(f"{len(spreads)} plans timed more than once: max/min median {statistics.median(spreads):.2f}, "
              f"largest {max(spreads):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
