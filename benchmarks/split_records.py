#!/usr/bin/env python3
"""Split probe records into a calibration set (2/3) and a held-out set (1/3), deterministically.

Records are sorted by run_id; every third one is held out. Left out of both: runs of the test-fixture
profiles (tiny-*, made while building the probe) and runs that ended in error or timeout (nothing to
score). Usage:
    python benchmarks/split_records.py reports/probes/h100-*.jsonl --out reports/probes/split
writes split/calibration.jsonl and split/heldout.jsonl (then: memplan calibrate split/calibration.jsonl;
memplan validate split/heldout.jsonl).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memplan.probe.records import read_records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/probes/split"))
    args = parser.parse_args()
    records = sorted((r for path in args.records for r in read_records(path)
                      if r["status"] in ("ok", "oom") and not str(r["model"]).startswith("tiny-")),
                     key=lambda r: r["run_id"])
    args.out.mkdir(parents=True, exist_ok=True)
    calibration = [r for i, r in enumerate(records) if i % 3 != 2]
    heldout = [r for i, r in enumerate(records) if i % 3 == 2]
    for name, rows in (("calibration", calibration), ("heldout", heldout)):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(calibration)} calibration, {len(heldout)} held out -> {args.out}")


if __name__ == "__main__":
    main()
