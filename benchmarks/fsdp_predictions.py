#!/usr/bin/env python3
"""Pre-register the estimates of the FSDP2 GPU batch (benchmarks/fsdp_runs.py) before it runs:

    python benchmarks/fsdp_predictions.py > reports/probes/fsdp-predictions.json
    python benchmarks/fsdp_predictions.py --out reports/probes/predictions/fsdp-b.json   # a later batch

Every run carries the estimator's git revision and the calibration's hash (memplan.planning.protocol),
and whether it is in-sample: a status-ok record of it is already in --records (the estimator may have
been fixed against it), so only the others are held out. Per run: the estimate's peak allocated bytes
per rank (what torch.cuda.max_memory_allocated should read on rank 0 of the fake world), per phase, the device view and the peak moment. For the
accelerate run: the plan as accelerate runs it and the VRAM cap (the estimate's needed bytes plus
one GiB, rounded up to a whole GiB) under which the estimate says it fits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsdp_runs import ACCELERATE, RECORDS, RUNS, build, read_all, records_of  # noqa: E402

from memplan.spec.flags import plan_from_flags  # noqa: E402
from memplan.estimate.peak import estimate  # noqa: E402
from memplan.integrations.accelerate_fsdp import accelerate_plan  # noqa: E402
from memplan.planning.protocol import calibration_hash, estimator_revision  # noqa: E402
from memplan.spec.loading import load_calibration, load_profile  # noqa: E402


def predicted(result) -> dict:
    return {"peak_allocated_bytes": result.peak_allocated_bytes, "device_bytes": result.device_bytes,
            "needed_bytes": result.needed_bytes, "peak_phase": result.peak_phase.value,
            "peak_moment": result.peak.moment.label, "phases": {p.phase.value: p.total for p in result.phases},
            "verdict": result.verdict.value}


def accelerate_cap(result) -> int:
    return math.ceil((result.needed_bytes + 2**30) / 2**30)


def provenance(*, run: dict, records: list[dict], stamp: dict) -> dict:
    """Revision, calibration hash, time, and in-sample (with the ok records' run ids) of one run."""
    done = [r["run_id"] for r in records_of(run, records) if r.get("status") == "ok"] if "fake_world" in run else []
    return {**stamp, "in_sample": bool(done), "in_sample_run_ids": done}


def document(*, records: list[dict]) -> dict:
    """The predictions of every run and of the accelerate run."""
    calibration = load_calibration(None)
    stamp = {"estimator_revision": estimator_revision(), "calibration_sha256": calibration_hash(calibration),
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in RUNS:
            result = estimate(load_profile(run["model"]), build(run, Path(tmp)), calibration)
            runs.append({"name": run["name"], "model": run["model"], "fake_world": run["fake_world"],
                         "nodes": run.get("nodes", 1), "flags": run["flags"], **predicted(result),
                         **provenance(run=run, records=records, stamp=stamp)})
    plan = accelerate_plan(plan_from_flags(None, **ACCELERATE["flags"]))
    result = estimate(load_profile(ACCELERATE["model"]), plan, calibration)
    accelerate = {"name": ACCELERATE["name"], "model": ACCELERATE["model"], "flags": ACCELERATE["flags"],
                  "vram_cap_gib": accelerate_cap(result), **predicted(result),
                  **provenance(run=ACCELERATE, records=records, stamp=stamp)}
    return {"set": "fsdp-fake-world", "written_before_the_runs": True, **stamp,
            "held_out": [r["name"] for r in [*runs, accelerate] if not r["in_sample"]], "runs": runs,
            "accelerate": accelerate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write here (default: stdout); commit it before the runs")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--records", type=Path, nargs="+", default=list(RECORDS), help="records made so far: their runs are in-sample")
    args = parser.parse_args()
    if args.out and args.out.exists() and not args.force:
        print(f"--out={args.out}: exists; predictions are written once, before the runs (--force to replace)",
              file=sys.stderr)
        return 2
    text = json.dumps(document(records=read_all(args.records)), indent=1) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"predictions -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if estimator_revision().endswith("-dirty"):
        print("warning: memplan/ has uncommitted changes: commit them, then predict again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
