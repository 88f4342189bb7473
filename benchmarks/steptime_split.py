#!/usr/bin/env python3
"""Split the probe records for the step-time model by run id, deterministically.

    python benchmarks/steptime_split.py reports/probes/h100-*.jsonl --out reports/probes/split

Rule (shared with the memory accuracy): sha256(run_id)'s first byte < 85 -> calibration, else held out
(memplan.planning.stepfit.is_calibration). Each run once, whatever files repeat it. Writes
steptime-calibration.jsonl and steptime-heldout.jsonl; then

    memplan calibrate reports/probes/split/steptime-calibration.jsonl --terms step-time \\
        --out memplan/profiles/calibration.yaml
    memplan validate reports/probes/split/steptime-heldout.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memplan.planning.stepfit import is_calibration
from memplan.probe.records import read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the two split files")
    args = parser.parse_args()
    seen: dict[str, dict] = {}
    for path in args.records:
        for record in read_records(path):
            seen.setdefault(str(record["run_id"]), record)
    parts = {"calibration": [], "heldout": []}
    for run_id, record in seen.items():
        parts["calibration" if is_calibration(run_id) else "heldout"].append(record)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        (args.out / f"steptime-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(parts['calibration'])} calibration, {len(parts['heldout'])} held out -> {args.out}")


if __name__ == "__main__":
    main()
