#!/usr/bin/env python3
"""The FSDP2 GPU batch on one H200 (runs in benchmarks/fsdp_runs.py; predictions committed first):

    python benchmarks/fsdp_batch.py --out $OUT [--part qwen|sa2va|unrun] [--only NAME ...] [--skip-accelerate]
                                    [--predictions PATH] [--budget-s S]
    python benchmarks/fsdp_batch.py --out /tmp/smoke --tiny     # CPU smoke test of the batch itself

Every fake-world run is one `memplan probe --fake-world N` subprocess with a hard timeout (a crash,
hang or OOM of one cannot stop the others); its record goes to $OUT/fsdp-fake-world.jsonl. Then the
accelerate run: `memplan estimate --emit-fsdp` writes the config and plan under $OUT/accelerate/,
and `accelerate launch` trains it (benchmarks/accelerate_fsdp_train.py) under the predicted VRAM cap,
appending to $OUT/accelerate.jsonl. Runs with a longer timeout of their own (ZeRO-3) go after it.
Last, a table: measured vs pre-registered (--predictions) peak allocated per rank; `*` marks a run
in-sample there (measured before those predictions were written).

--part unrun: the runs with no status-ok record in --records (reports/probes/h200-fsdp-fake-world.jsonl)
and the accelerate run. --budget-s S: no run starts after S seconds, and every run is cut to end by
S + 60 s, so the table prints by then. Expected runtime: fake-world runs took 40-43 s each on the H200
(imports, random init on the CPU, 2 steps), the accelerate run about 60 s: 15 + 1 runs about 11 minutes,
the 10 + 1 unrun about 8 (one command: --part unrun --budget-s 480).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsdp_runs import ACCELERATE, RECORDS, RUNS, TIMEOUT_S, cli_flags, plan_file, read_all, unrun  # noqa: E402

GIB = 2**30
GRACE_S = 60  # a run started before the budget may run this long past it


class Clock:
    """The batch's time budget: whether a run may start, and how long a started one may take."""

    def __init__(self, *, budget_s: float | None) -> None:
        self.start, self.budget_s = time.time(), budget_s

    def elapsed(self) -> float:
        return time.time() - self.start

    def may_start(self) -> bool:
        return self.budget_s is None or self.elapsed() < self.budget_s

    def limit(self, timeout_s: float) -> float:
        """timeout_s, cut so the run ends by budget + GRACE_S (at least 10 s)."""
        if self.budget_s is None:
            return timeout_s
        return max(10.0, min(timeout_s, self.budget_s + GRACE_S - self.elapsed()))


TINY = "tests/fixtures/profiles/tiny-sa2va.yaml"
TINY_FLAGS = {"text_len": 64, "tiles": 1, "res": 64, "objects": 1, "lora_rank": 8}


def tiny(run: dict) -> dict:
    """The run on the tiny test profile (a CPU smoke test of the batch itself, --tiny)."""
    flags = {k: v for k, v in run["flags"].items() if k in ("engine", "zero", "offload")}
    return {**run, "model": TINY, "flags": {**flags, **TINY_FLAGS}}


def fake_world_run(run: dict, out: Path, plans: Path, *, device: str = "cuda", clock: Clock) -> dict:
    """One probe subprocess; its last record, or a stand-in saying what happened."""
    from memplan.probe import records

    path = plan_file(run, plans)
    hard = clock.limit(run.get("timeout", TIMEOUT_S) + 30)
    argv = [sys.executable, "-m", "memplan.cli.main", "probe", "--model", run["model"], *cli_flags(run),
            *(["--plan", str(path)] if path else []), "--steps", "2", "--out", str(out), "--device", device,
            "--timeout", str(round(max(5.0, hard - 50)))]
    before = len(records.read_records(out)) if out.exists() else 0
    started = time.time()
    print(f"=== {run['name']}: {' '.join(argv[3:])}", flush=True)
    try:
        proc = subprocess.run(argv, timeout=hard, capture_output=True, text=True)
        print((proc.stdout + proc.stderr)[-2500:], flush=True)
        missing = f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}"
    except subprocess.TimeoutExpired:
        missing = f"killed after {hard:.0f} s"
    found = records.read_records(out) if out.exists() else []
    if len(found) > before:
        record = found[-1]
        return {"status": record["status"], "peak": record["summary"]["peak_allocated_bytes"],
                "error": record.get("error"), "wall_s": round(time.time() - started, 1)}
    return {"status": "error", "peak": None, "error": missing, "wall_s": round(time.time() - started, 1)}


def accelerate_run(out: Path, cap_gib: float, *, clock: Clock) -> dict:
    """Emit the FSDP2 config with memplan, then train it through accelerate launch under the cap."""
    work = out / "accelerate"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "fsdp.yaml"
    flags = ACCELERATE["flags"]
    emit = [sys.executable, "-m", "memplan.cli.main", "estimate", "--model", ACCELERATE["model"],
            "--engine", "fsdp2", "--gpus", str(flags["gpus"]), "--text-len", str(flags["text_len"]),
            "--tiles", str(flags["tiles"]), "--res", str(flags["res"]), "--objects", str(flags["objects"]),
            "--vram", str(cap_gib), "--emit-fsdp", str(config), "--force", "-f", "json"]
    started = time.time()
    try:
        emitted = subprocess.run(emit, timeout=clock.limit(120), capture_output=True, text=True)
        launch = [line for line in emitted.stdout.splitlines() if line.startswith("accelerate launch")]
        if emitted.returncode or not launch:
            return {"status": "error", "peak": None, "error": f"emit failed: {emitted.stderr[-300:]}", "wall_s": 0}
        print(f"=== {ACCELERATE['name']}: {launch[0]}", flush=True)
        result_file = out / "accelerate.jsonl"
        config_args = launch[0].split()[2:4]  # --config_file PATH (one node: no rank or master flags)
        argv = [sys.executable, "-m", "accelerate.commands.launch", *config_args, "benchmarks/accelerate_fsdp_train.py", "--plan", str(work / "fsdp.plan.yaml"),
                "--vram-cap", str(cap_gib), "--out", str(result_file), "--steps", "3"]
        proc = subprocess.run(argv, timeout=clock.limit(300), capture_output=True, text=True)
        print((proc.stdout + proc.stderr)[-2500:], flush=True)
        lines = result_file.read_text(encoding="utf-8").splitlines() if result_file.exists() else []
        if not lines:
            return {"status": "error", "peak": None, "error": f"exit {proc.returncode}, no result",
                    "wall_s": round(time.time() - started, 1)}
        record = json.loads(lines[-1])
        return {"status": record["status"], "peak": record["peak_allocated_bytes"], "error": record.get("error"),
                "wall_s": round(time.time() - started, 1)}
    except (subprocess.TimeoutExpired, OSError) as error:
        return {"status": "error", "peak": None, "error": str(error)[:300], "wall_s": round(time.time() - started, 1)}


def table(rows: list[tuple[str, dict, dict]]) -> str:
    lines = [f"{'run':30} {'N':>5} {'status':7} {'meas GiB':>9} {'pred GiB':>9} {'err':>7} {'wall s':>7}"]
    for name, predicted, measured in rows:
        pred = predicted["peak_allocated_bytes"]
        meas = measured["peak"]
        error = f"{(pred - meas) / meas:+.1%}" if meas else ""
        mark = "*" if predicted.get("in_sample") else " "
        lines.append(f"{name + mark:30} {predicted.get('fake_world', 1):5} {measured['status']:7} "
                     f"{(meas or 0) / GIB:9.2f} {pred / GIB:9.2f} {error:>7} {measured['wall_s']:7}")
        if measured["status"] != "ok":
            lines.append(f"{'':30} {str(measured['error'])[:140]}")
    if any(predicted.get("in_sample") for _, predicted, _ in rows):
        lines.append("* in-sample: measured before these predictions were written")
    return "\n".join(lines)


def selected(*, only: list[str] | None, part: str | None, records: list[Path]) -> list[dict]:
    """The fake-world runs of --only / --part, in RUNS order."""
    if part == "unrun":
        pending = {run["name"] for run in unrun(records=read_all(records))}
    out = []
    for run in RUNS:
        if only and run["name"] not in only:
            continue
        if part in ("qwen", "sa2va") and not run["model"].startswith(part):
            continue
        if part == "unrun" and run["name"] not in pending:
            continue
        out.append(run)
    return out


def summary(out: Path, rows: list[tuple[str, dict, dict]]) -> None:
    """$OUT/fsdp-batch-summary.json, rewritten after every run (a killed batch keeps what it made)."""
    (out / "fsdp-batch-summary.json").write_text(
        json.dumps([{"name": n, "predicted": p["peak_allocated_bytes"], "in_sample": p.get("in_sample"), **m}
                    for n, p, m in rows], indent=1), encoding="utf-8")


def skipped() -> dict:
    return {"status": "skipped", "peak": None, "error": "not started: past --budget-s", "wall_s": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reports/probes")))
    parser.add_argument("--predictions", type=Path, default=Path("reports/probes/fsdp-predictions.json"),
                        help="pre-registered predictions for the table (default: the first batch's, at 82a6351)")
    parser.add_argument("--only", nargs="*", help="run only these names (the accelerate run's too)")
    parser.add_argument("--part", choices=("qwen", "sa2va", "unrun"), help="the Qwen2.5-1.5B runs; the Sa2VA-1B "
                        "runs with ZeRO-3 and the accelerate run; or the runs with no ok record in --records and "
                        "the accelerate run")
    parser.add_argument("--records", type=Path, nargs="+", default=list(RECORDS), help="records made so far (for --part unrun)")
    parser.add_argument("--budget-s", type=float, help=f"start no run after this many seconds; every run ends "
                        f"by it + {GRACE_S} s")
    parser.add_argument("--skip-accelerate", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: the tiny profile, --device cpu, "
                        "no accelerate run (the table's predictions are then not these runs')")
    args = parser.parse_args()
    clock = Clock(budget_s=args.budget_s)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    predictions = json.loads(args.predictions.read_text(encoding="utf-8"))
    by_name = {run["name"]: run for run in predictions["runs"]}
    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / "fsdp-fake-world.jsonl"
    runs = selected(only=args.only, part=args.part, records=args.records)
    with_accelerate = not args.skip_accelerate and not args.tiny and args.part != "qwen" and (
        not args.only or ACCELERATE["name"] in args.only)
    unpredicted = [run["name"] for run in runs if run["name"] not in by_name]
    if unpredicted:
        parser.error(f"--predictions {args.predictions} has no prediction for {', '.join(unpredicted)}: "
                     "pre-register them first (benchmarks/fsdp_predictions.py --out NEW)")
    first = [run for run in runs if "timeout" not in run]
    schedule = [*first, *([ACCELERATE] if with_accelerate else []), *[run for run in runs if "timeout" in run]]
    print(f"batch: {len(schedule)} runs ({', '.join(run['name'] for run in schedule)}); predictions "
          f"{args.predictions}; budget {args.budget_s or 'none'} s", flush=True)
    rows = []
    for run in schedule:
        if run is ACCELERATE:
            accelerate = predictions["accelerate"]
            measured = (accelerate_run(args.out, accelerate["vram_cap_gib"], clock=clock) if clock.may_start()
                        else skipped())
            rows.append((ACCELERATE["name"], accelerate, measured))
        else:
            measured = (fake_world_run(tiny(run) if args.tiny else run, records, args.out / "plans",
                                       device="cpu" if args.tiny else "cuda", clock=clock)
                        if clock.may_start() else skipped())
            rows.append((run["name"], by_name[run["name"]], measured))
        summary(args.out, rows)
        print(f"[{clock.elapsed():.0f} s] {rows[-1][0]}: {measured['status']}", flush=True)
    print("\n" + table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
