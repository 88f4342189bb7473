"""Run a run set (schema memplan.runset/1) through ``memplan probe``, one process per run, into OUT.

    python benchmarks/stacks_batch.py benchmarks/stacks/runset-a.yaml --out "$OUT"

Each run is ``python -m memplan.cli.main probe --model M --plan P [flags] --steps N --timeout T
--out OUT/records.jsonl`` in its own process group, its output in OUT/logs/NAME.log. A run that
ends without appending a record (a crash, a kill past its time) gets an error or timeout record
written here, so every planned run has exactly one record and the batch goes on. OUT/runs.jsonl maps
each run name to its record's run_id and status. ``--budget-s`` bounds the whole batch: no run
starts with less than MIN_START_S left (the rest are listed as skipped) and a run still going when
the budget ends is killed (a timeout record). A short table is printed last.

The run set format is the accuracy protocol's (memplan/planning/protocol.py where present): name,
model, plan (relative to the run set's folder), flags (build_plan keywords), vram_cap, timeout_s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAG_OPTIONS = {
    "res": "--res", "zero": "--zero", "engine": "--engine", "offload": "--offload", "lora_rank": "--lora-rank",
    "tiles": "--tiles", "frames": "--frames", "text_len": "--text-len", "micro_batch": "--micro-batch",
    "objects": "--objects", "ckpt": "--ckpt", "mode": "--mode", "stack": "--stack", "attention": "--attention",
    "adapter_dtype": "--adapter-dtype",
}
ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
       "TORCH_CUDA_ARCH_LIST": "9.0", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
GIB = 2**30
START_GRACE_S = 60  # beyond the probe's own --timeout: imports, CUDA start-up, writing the record
MIN_START_S = 45  # a run needs about this long on one H200 (start-up included)


def load_runs(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("schema") != "memplan.runset/1":
        raise SystemExit(f"{path}: not a run set (schema memplan.runset/1)")
    return document


def plan_path(runset_path: Path, plan: str | None) -> str | None:
    if plan is None:
        return None
    beside = runset_path.parent / plan
    return str(beside) if beside.exists() else plan


def probe_argv(run: dict[str, Any], *, runset_path: Path, steps: int, out: Path, device: str) -> list[str]:
    """The memplan probe arguments of one planned run."""
    argv = ["probe", "--steps", str(steps), "--out", str(out), "--timeout", str(run.get("timeout_s", 120)),
            "--device", device]
    if run.get("gpus", 1) != 1:
        argv += ["--gpus", str(run["gpus"])]
    if run.get("model"):
        argv += ["--model", run["model"]]
    if run.get("plan"):
        argv += ["--plan", plan_path(runset_path, run["plan"])]
    for key, value in (run.get("flags") or {}).items():
        if key == "ckpt":
            argv.append("--ckpt" if value else "--no-ckpt")
        else:
            argv += [FLAG_OPTIONS[key], str(value)]
    if run.get("vram_cap") is not None:
        argv += ["--vram-cap", str(run["vram_cap"])]
    return argv


def count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def last_record(path: Path) -> dict[str, Any] | None:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return None


def fallback_record(run: dict[str, Any], argv: list[str], *, status: str, error: str) -> dict[str, Any]:
    """An error/timeout record for a run that wrote none (built without torch)."""
    from memplan.cli.options import build_plan, resolve_profile
    from memplan.probe.environment import fallback_environment
    from memplan.probe.records import make_record

    flags = {key: value for key, value in (run.get("flags") or {}).items()}
    try:
        plan = build_plan(run.get("_plan_path"), **flags)
        profile = resolve_profile(run.get("model"), plan)
        profile_doc, plan_doc = profile.model_dump(mode="json"), plan.model_dump(mode="json")
    except Exception as exc:  # noqa: BLE001 - the record must still be written
        profile_doc, plan_doc = {"name": run.get("model")}, {"error": str(exc)[:200]}
    return make_record(profile=profile_doc, plan=plan_doc, ranks=[], environment=fallback_environment(1),
                       command="memplan " + " ".join(argv), status=status, error=error)


def run_one(run: dict[str, Any], argv: list[str], *, records: Path, log: Path,
            limit_s: float) -> tuple[dict[str, Any], float]:
    """Run one probe process for at most ``limit_s``; returns its record (the probe's or a fallback)
    and the wall seconds."""
    from memplan.probe.records import append_record

    before = count_lines(records)
    started = time.perf_counter()
    env = {**os.environ, **ENV}
    limit = limit_s
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "memplan.cli.main", *argv], stdout=handle,
                                   stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = process.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                    process.wait(timeout=15)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            code = process.returncode
    wall = time.perf_counter() - started
    if count_lines(records) > before:
        record = last_record(records)
        if record is not None:
            return record, wall
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
    status = "timeout" if timed_out else "error"
    error = f"runner: {'killed after ' + str(int(limit)) + ' s' if timed_out else f'exit {code}'}, no record; {tail[0][:300]}"
    record = fallback_record(run, argv, status=status, error=error)
    append_record(records, record)
    return record, wall


def steady_step_s(record: dict[str, Any]) -> float | None:
    """Median step time without the first step."""
    times = (record.get("ranks") or [{}])[0].get("step_times_s") or []
    return round(statistics.median(times[1:]), 3) if len(times) > 1 else None


def table(rows: list[dict[str, Any]]) -> str:
    header = f"{'run':34} {'status':8} {'peak GiB':>9} {'phase':15} {'step s':>7} {'wall s':>7}"
    lines = [header, "-" * len(header)]
    for row in rows:
        peak = row.get("peak_allocated_bytes")
        lines.append(f"{row['name'][:34]:34} {row['status']:8} {peak / GIB if peak else 0:9.2f} "
                     f"{str(row.get('peak_phase') or '-'):15} {str(row.get('step_s') or '-'):>7} "
                     f"{row.get('wall_s', 0):7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runset", type=Path)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reports/probes/stacks")))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="the batch's wall budget: no run starts with less than MIN_START_S left, and each is "
                             "killed (a timeout record) when the budget runs out")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = parser.parse_args(argv)
    runset = load_runs(args.runset)
    only = {name for name in args.only.split(",") if name}
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    records = out / "records.jsonl"
    started = time.perf_counter()
    rows = []
    for run in runset["runs"]:
        if only and run["name"] not in only:
            continue
        left = args.budget_s - (time.perf_counter() - started)
        if left < MIN_START_S:
            rows.append({"name": run["name"], "status": "skipped", "wall_s": 0.0})
            continue
        run = {**run, "_plan_path": plan_path(args.runset, run.get("plan"))}
        probe = probe_argv(run, runset_path=args.runset, steps=int(runset.get("steps", 3)), out=records,
                           device=args.device)
        limit = min(float(run.get("timeout_s", 120)) + START_GRACE_S, left)
        record, wall = run_one(run, probe, records=records, log=out / "logs" / f"{run['name']}.log", limit_s=limit)
        summary = record.get("summary") or {}
        row = {"name": run["name"], "status": record["status"], "run_id": record["run_id"],
               "peak_allocated_bytes": summary.get("peak_allocated_bytes"), "peak_phase": summary.get("peak_phase"),
               "step_s": steady_step_s(record), "wall_s": round(wall, 1), "error": record.get("error"),
               "key": f"{runset['batch']}/{run['name']}"}
        rows.append(row)
        with open(out / "runs.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{run['name']}: {row['status']} {row['wall_s']} s {row['error'] or ''}", flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
