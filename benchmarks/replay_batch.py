#!/usr/bin/env python3
"""Trace, replay, then run capped: a run set's tight-band verdicts decided by the replay before each capped run.

    python3 benchmarks/replay_batch.py benchmarks/stacks/runset-replay-d.yaml --out-dir /tmp/replay-d \
        --estimate reports/probes/predictions/replay-d.jsonl --budget 560

For every run, in the run set's order, one plan at a time:

1. `memplan probe` without the run's cap, with --trace-out (benchmarks/trace_runset.py's trace_one);
2. the trace replayed at the allocator limit the cap gives (trace_runset.replay_entry: the default allocator
   and max_split_size_mb:512), the verdict written to ``replay.json`` with the time it was decided, the
   trace's sha256 and the code's revision, before step 3 starts;
3. the run capped as planned (benchmarks/run_runset.py's run_one), itself traced to
   ``<name>.capped.trace.json.gz`` (where the driver puts segments under a cap), its record appended to
   ``records.jsonl``.

The replay's verdict is a pure function of the uncapped trace and of the code at the revision it names, both
kept, so anyone can recompute it (tests/test_replay.py does for the committed batches); the capped run starts
after it is written. The estimate's verdicts (`memplan predict`) are committed before the batch, as always.
With --budget, a plan starts only with --min-pair seconds left for both of its runs. Prints a table last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_runset import run_one  # noqa: E402  (benchmarks/ is not a package)
from score_replay import report, score  # noqa: E402
from trace_runset import budgeted, bundle_traces, replay_entry, trace_one  # noqa: E402

def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def revision() -> str:
    from memplan.planning.protocol import estimator_revision

    return estimator_revision(also=("benchmarks/replay_batch.py", "benchmarks/trace_runset.py"))


def decide(runset, run, runset_path: Path, out_dir: Path, timeout_s: float) -> dict:
    """Steps 1 and 2: the uncapped trace and the replay's verdict at the run's cap."""
    from memplan.probe.records import append_record

    record, trace_path, seconds = trace_one(runset, run, runset_path, out_dir, timeout_s)
    if record is not None:
        append_record(out_dir / "uncapped.jsonl", record)
    entry = replay_entry(trace_path, run, record)
    entry.update(seconds=round(seconds, 1), decided_utc=utc_now(), revision=revision(),
                 trace_sha256=hashlib.sha256(trace_path.read_bytes()).hexdigest() if trace_path.exists() else None)
    return entry


def capped_traced(runset, run, runset_path: Path, out_dir: Path, timeout_s: float) -> tuple[dict, Path, float, int | None]:
    """The run capped as planned, traced to ``<name>.capped.trace.json.gz``: (record, trace path, seconds,
    returncode); the record gets ``started_utc`` and is appended to records.jsonl, the log kept beside it."""
    from memplan.probe.records import append_record

    work = out_dir / "capped"
    work.mkdir(exist_ok=True)
    capped_trace = out_dir / f"{run.name}.capped.trace.json.gz"
    capped_trace.unlink(missing_ok=True)
    started = utc_now()
    record, seconds, code = run_one(runset, run, runset_path, work, timeout_s,
                                    extra=("--trace-out", str(capped_trace)))
    record["started_utc"] = started
    append_record(out_dir / "records.jsonl", record)
    if (work / f"{run.name}.log").exists():
        shutil.copy(work / f"{run.name}.log", out_dir / f"{run.name}.capped.log")
    return record, capped_trace, seconds, code


def check(runset, run, runset_path: Path, out_dir: Path, timeout_s: float) -> dict:
    """Step 3: the capped run, traced (capped_traced)."""
    record, _, seconds, code = capped_traced(runset, run, runset_path, out_dir, timeout_s)
    return {"status": record["status"], "seconds": round(seconds, 1), "rc": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runset", type=Path)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--estimate", type=Path, help="the estimate's committed predictions (memplan predict)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole batch")
    parser.add_argument("--min-pair", type=float, default=100, help="do not start a plan with less budget left")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()

    from memplan.planning.protocol import load_runset

    runset = load_runset(args.runset)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget if args.budget else None
    entries: list[dict] = []
    for run, left in budgeted(runset.runs, only=args.only, budget=args.budget, min_seconds=args.min_pair,
                              skipped=entries):
        entry = decide(runset, run, args.runset, args.out_dir, min(run.timeout_s, left / 2) if left else run.timeout_s)
        entries.append(entry)
        (args.out_dir / "replay.json").write_text(json.dumps({"batch": runset.batch, "runs": entries}, indent=1))
        verdict = (entry.get("default") or {}).get("verdict")
        print(f"[{time.strftime('%H:%M:%S')}] {run.name}: traced {entry.get('status')} {entry['seconds']:.0f}s, "
              f"replay says {verdict} (reproduces={entry.get('reproduces')})", flush=True)
        left = deadline - time.time() if deadline else None
        if verdict is None or (left is not None and left < args.min_pair / 2):
            continue
        outcome = check(runset, run, args.runset, args.out_dir, min(run.timeout_s, left) if left else run.timeout_s)
        print(f"[{time.strftime('%H:%M:%S')}] {run.name}: capped {outcome['status']} {outcome['seconds']:.0f}s",
              flush=True)
    (args.out_dir / "replay.json").write_text(json.dumps({"batch": runset.batch, "runs": entries}, indent=1))
    bundle_traces(args.out_dir)
    if (args.out_dir / "records.jsonl").exists():
        print("\n".join(report(score(args.out_dir / "replay.json", args.out_dir / "records.jsonl", args.estimate))))


if __name__ == "__main__":
    main()
