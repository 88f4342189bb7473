#!/usr/bin/env python3
"""Run a run set (schema memplan.runset/1) on this machine's GPU, one `memplan probe` subprocess per run,
in the run set's order, one at a time (a VRAM cap reads the device's free memory, which another run
would disturb). The same file `memplan predict` estimated, so what was planned is what runs.

    python3 benchmarks/run_runset.py reports/probes/runsets/h200-batch4.yaml --out $OUT/h200-batch4.jsonl \
        --predictions reports/probes/predictions/h200-batch4.jsonl --budget 500

Every run gets its own record file first; the runner stamps the record with ``run_key`` (batch/name)
and appends it to --out, so `memplan score` matches it to its prediction. A run that leaves no record
(killed at its timeout, crashed) gets an 'error'/'timeout' record with its run key: every started run
yields exactly one line. With --budget, runs that cannot get --min-run seconds are skipped (listed).
Prints one line per run as it ends, then `memplan score` of the batch (or a short table without
--predictions).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fallback_record(runset, run, runset_path: Path, status: str, error: str) -> dict:
    """A minimal memplan.probe/1 record for a run that wrote none."""
    from memplan.spec.flags import resolve_profile
    from memplan.cli.protocol_cmd import planned_plan
    from memplan.probe import records

    plan = planned_plan(runset, run, runset_path)
    profile = resolve_profile(run.model, plan)
    environment = {key: None for key in ("gpu_name", "gpu_total_bytes", "driver", "cuda", "torch", "transformers",
                                         "peft", "deepspeed", "python", "hostname")}
    environment["world_size"] = run.gpus
    return records.make_record(profile=profile.model_dump(mode="json"), plan=plan.model_dump(mode="json"), ranks=[],
                               environment=environment, command=f"run {runset.key(run)}", status=status, error=error,
                               notes=[f"run set {runset.batch}: no record from the probe"])


def run_one(runset, run, runset_path: Path, work: Path, timeout_s: float,
            device: str = "cuda", extra: tuple[str, ...] = ()) -> tuple[dict, float, int | None]:
    """(record with run_key, seconds, returncode) of one planned run; ``extra``: more probe arguments
    (benchmarks/replay_batch.py passes --trace-out)."""
    from memplan.planning.protocol import probe_argv

    out = work / f"{run.name}.jsonl"
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "memplan.cli.main", "probe", *probe_argv(runset, run, runset_path),
            "--out", str(out), "--timeout", str(max(int(timeout_s) - 15, 5)), "--device", device,
            *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           **({"PYTORCH_CUDA_ALLOC_CONF": run.alloc_conf} if run.alloc_conf else {})}
    started = time.time()
    with open(work / f"{run.name}.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s + 20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = None
    seconds = time.time() - started
    from memplan.probe.records import read_records

    lines = read_records(out) if out.exists() else []
    if lines:
        record = lines[-1]
    else:
        status = "timeout" if code is None else "error"
        tail = (work / f"{run.name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        record = fallback_record(runset, run, runset_path, status, f"rc={code}: {tail[0][:300]}")
    record["run_key"] = runset.key(run)
    record["runset"] = str(runset_path)
    return record, seconds, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runset", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="JSONL the stamped records are appended to")
    parser.add_argument("--predictions", type=Path, help="predictions JSONL to score the batch against at the end")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole batch")
    parser.add_argument("--min-run", type=float, default=40, help="do not start a run with less budget left")
    parser.add_argument("--only", nargs="*", help="run names to keep")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu (to try a tiny run set without a GPU)")
    args = parser.parse_args()

    from memplan.planning.protocol import load_runset
    from memplan.probe.records import append_record

    runset = load_runset(args.runset)
    runs = [r for r in runset.runs if not args.only or r.name in args.only]
    work = args.out.parent / f"{runset.batch}-runs"
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget if args.budget else None
    results = []
    for run in runs:
        left = deadline - time.time() if deadline else None
        if left is not None and left < args.min_run:
            results.append({"name": run.name, "status": "skipped (budget)", "seconds": 0})
            print(f"[{time.strftime('%H:%M:%S')}] {run.name}: skipped (budget)", flush=True)
            continue
        timeout = min(run.timeout_s, left) if left is not None else run.timeout_s
        try:
            record, seconds, code = run_one(runset, run, args.runset, work, timeout, args.device)
        except Exception as error:  # noqa: BLE001 - one failing run must not stop the batch
            results.append({"name": run.name, "status": f"runner error: {error}", "seconds": 0})
            print(f"[{time.strftime('%H:%M:%S')}] {run.name}: runner error {error}", flush=True)
            continue
        append_record(args.out, record)
        peak = (record.get("summary") or {}).get("peak_allocated_bytes") or 0
        results.append({"name": run.name, "status": record["status"], "seconds": round(seconds, 1), "rc": code,
                        "peak_allocated_gib": round(peak / 2**30, 2), "context_bytes": record.get("context_bytes")})
        print(f"[{time.strftime('%H:%M:%S')}] {run.name}: {record['status']} rc={code} {seconds:.0f}s "
              f"peak {peak / 2**30:.2f} GiB", flush=True)
    (args.out.parent / f"{runset.batch}-batch.json").write_text(json.dumps(results, indent=1))
    if args.predictions and args.out.exists():
        subprocess.run([sys.executable, "-m", "memplan.cli.main", "score", str(args.predictions), str(args.out),
                        "--format", "md"], cwd=REPO)
    else:
        print("| run | status | s | peak alloc GiB | context bytes |\n|---|---|---:|---:|---:|")
        for r in results:
            print(f"| {r['name']} | {r['status']} | {r['seconds']} | {r.get('peak_allocated_gib', '')} | "
                  f"{r.get('context_bytes') or ''} |")


if __name__ == "__main__":
    main()
