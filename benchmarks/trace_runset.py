#!/usr/bin/env python3
"""Trace a run set's plans without their cap, then replay each trace at its run's cap (memplan replay).

    python3 benchmarks/trace_runset.py benchmarks/stacks/runset-replay-b.yaml --out-dir /tmp/replay-b --budget 370

For every run: `memplan probe` with the run's flags, without --vram-cap, with --trace-out (one subprocess
each, as benchmarks/run_runset.py runs them); then the trace replayed under the allocator limit the run's
cap gives (memplan.planning.replay.allocator_limit), under the default allocator and max_split_size_mb:512.
Writes, under --out-dir: the traces (``<name>.trace.json.gz``, also bundled with the logs into
``traces-1.tar``, ``traces-2.tar``, ... of at most 15 MiB each: bundle_traces), the
uncapped records (``records.jsonl``) and ``replay.json`` (one entry per run: the replay's verdicts, the
smallest limit, and whether the unlimited replay reproduces the run's peak reserved). Prints a table last.

The replay verdicts of a run set whose capped runs have not yet run are predictions: commit replay.json
before the capped batch (benchmarks/run_runset.py) runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = (None, 512 * 2**20)


def uncapped_argv(runset, run, runset_path: Path) -> list[str]:
    """The run's probe arguments less --vram-cap."""
    from memplan.planning.protocol import probe_argv

    argv = probe_argv(runset, run, runset_path)
    if "--vram-cap" in argv:
        index = argv.index("--vram-cap")
        del argv[index:index + 2]
    return argv


def trace_one(runset, run, runset_path: Path, out_dir: Path, timeout_s: float) -> tuple[dict | None, Path, float]:
    trace_path = out_dir / f"{run.name}.trace.json.gz"
    record_path = out_dir / f"{run.name}.jsonl"
    trace_path.unlink(missing_ok=True)
    record_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "memplan.cli.main", "probe", *uncapped_argv(runset, run, runset_path),
            "--out", str(record_path), "--timeout", str(max(int(timeout_s) - 15, 5)), "--trace-out", str(trace_path)]
    started = time.time()
    with open(out_dir / f"{run.name}.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s + 40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    from memplan.probe.records import read_records

    records = read_records(record_path) if record_path.exists() else []
    record = records[-1] if records else None
    if record is not None:
        record["run_key"] = runset.key(run)
    return record, trace_path, time.time() - started


def replay_entry(trace_path: Path, run, record: dict | None) -> dict:
    from memplan.planning.replay import allocator_limit, fidelity, replay, reproduces, setting_label, smallest_limit
    from memplan.spec.cards import parse_vram_cap
    from memplan.spec.trace import read_trace

    entry = {"name": run.name, "vram_cap": run.vram_cap, "status": record.get("status") if record else "no record"}
    if not trace_path.exists():
        return {**entry, "error": "no trace"}
    trace = read_trace(trace_path)
    unlimited, measured = fidelity(trace)
    entry.update(requests=trace.requests, unmatched_frees=trace.header.get("unmatched_frees"),
                 ring_full=trace.header.get("ring_full"), torch=trace.header.get("torch"),
                 unlimited_peak_reserved_bytes=unlimited.peak_reserved_bytes, measured_peak_reserved_bytes=measured,
                 reproduces=reproduces(unlimited, measured))
    if run.vram_cap is None:
        return entry
    limit = allocator_limit(trace, parse_vram_cap(run.vram_cap))
    entry["limit_bytes"] = limit
    for setting in SETTINGS:
        label = setting_label(setting)
        result = replay(trace, limit_bytes=limit, max_split_bytes=setting)
        entry[label] = {"verdict": "fits" if result.fits else "oom",
                        "smallest_limit_bytes": smallest_limit(trace, max_split_bytes=setting, unlimited=unlimited),
                        "failed_request_bytes": result.failure.requested_bytes if result.failure else None}
    return entry


def budgeted(runs, *, only: list[str] | None, budget: float | None, min_seconds: float, skipped: list[dict]):
    """(run, seconds left or None) for each run kept by ``only`` that still has ``min_seconds`` of the batch's
    ``budget``; the others are appended to ``skipped`` as ``{"name", "status": "skipped (budget)"}``."""
    deadline = time.time() + budget if budget else None
    for run in runs:
        if only and run.name not in only:
            continue
        left = deadline - time.time() if deadline else None
        if left is not None and left < min_seconds:
            skipped.append({"name": run.name, "status": "skipped (budget)"})
            continue
        yield run, left


def bundle_traces(out_dir: Path, *, chunk_bytes: int = 15 * 2**20) -> None:
    """The traces and logs into traces-1.tar, traces-2.tar, ... of at most ``chunk_bytes`` each (what the
    device machine hands back: a few files of at most 16 MiB)."""
    paths = sorted(out_dir.glob("*.trace.json.gz")) + sorted(out_dir.glob("*.log"))
    chunks: list[list[Path]] = [[]]
    size = 0
    for path in paths:
        if chunks[-1] and size + path.stat().st_size > chunk_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(path)
        size += path.stat().st_size
    for number, chunk in enumerate(chunks, start=1):
        with tarfile.open(out_dir / f"traces-{number}.tar", "w") as bundle:
            for path in chunk:
                bundle.add(path, arcname=path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runset", type=Path)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole batch")
    parser.add_argument("--min-run", type=float, default=45)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()

    from memplan.planning.protocol import load_runset
    from memplan.probe.records import append_record

    runset = load_runset(args.runset)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    for run, left in budgeted(runset.runs, only=args.only, budget=args.budget, min_seconds=args.min_run,
                              skipped=entries):
        timeout = min(run.timeout_s, left) if left is not None else run.timeout_s
        record, trace_path, seconds = trace_one(runset, run, args.runset, args.out_dir, timeout)
        if record is not None:
            append_record(args.out_dir / "records.jsonl", record)
        entry = replay_entry(trace_path, run, record)
        entry["seconds"] = round(seconds, 1)
        entries.append(entry)
        print(f"[{time.strftime('%H:%M:%S')}] {run.name}: {entry.get('status')} {seconds:.0f}s "
              f"reproduces={entry.get('reproduces')} default={entry.get('default', {}).get('verdict')}", flush=True)
        (args.out_dir / "replay.json").write_text(json.dumps({"batch": runset.batch, "runs": entries}, indent=1))
    bundle_traces(args.out_dir)
    gib = 2**30
    print("| run | status | replay/measured reserved | at cap: default | max_split 512 | smallest default GiB | limit GiB |")
    print("|---|---|---:|---|---|---:|---:|")
    for e in entries:
        measured, replayed = e.get("measured_peak_reserved_bytes"), e.get("unlimited_peak_reserved_bytes")
        ratio = f"{replayed / measured:.4f}" if measured and replayed else ""
        default, split = e.get("default") or {}, e.get("max_split_size_mb:512") or {}
        smallest = default.get("smallest_limit_bytes")
        print(f"| {e['name']} | {e.get('status')} | {ratio} | {default.get('verdict', '')} | {split.get('verdict', '')} | "
              f"{smallest / gib if smallest else 0:.2f} | {(e.get('limit_bytes') or 0) / gib:.2f} |")


if __name__ == "__main__":
    main()
