#!/usr/bin/env python3
"""Write the two sides of probe records as files, by the rule that fixes them (no stored split).

Each record's side is fixed once by its run id: sha256(run_id) first byte < 85 -> calibration (a third),
else held-out (memplan.planning.protocol.side_of). Left out of both, as `memplan calibrate` leaves them
out: runs of the test-fixture profiles (tiny-*) and runs that ended in error or timeout. Usage:
    python benchmarks/split_records.py reports/probes/h100-*.jsonl --out /tmp/sides
writes /tmp/sides/calibration.jsonl and /tmp/sides/held-out.jsonl. `memplan calibrate` and
`memplan validate --side` apply the same rule to the record files directly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memplan.planning.protocol import SIDES, scored, side_of
from memplan.probe.records import read_records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    records = [r for path in args.records for r in read_records(path) if scored(r["model"], r["status"])]
    args.out.mkdir(parents=True, exist_ok=True)
    for side in SIDES:
        rows = [r for r in records if side_of(r["run_id"]) == side]
        (args.out / f"{side}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{side}: {len(rows)} -> {args.out / (side + '.jsonl')}")


if __name__ == "__main__":
    main()
