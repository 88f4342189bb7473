#!/usr/bin/env python3
"""The FSDP2 GPU batch on one H200 (runs in benchmarks/fsdp_runs.py; predictions committed first):

    python benchmarks/fsdp_batch.py --out $OUT [--part qwen|sa2va] [--only NAME ...] [--skip-accelerate]
    python benchmarks/fsdp_batch.py --out /tmp/smoke --tiny     # CPU smoke test of the batch itself

Every fake-world run is one `memplan probe --fake-world N` subprocess with a hard timeout (a crash,
hang or OOM of one cannot stop the others); its record goes to $OUT/fsdp-fake-world.jsonl. Then the
accelerate run: `memplan estimate --emit-fsdp` writes the config and plan under $OUT/accelerate/,
and `accelerate launch` trains it (benchmarks/accelerate_fsdp_train.py) under the predicted VRAM cap,
appending to $OUT/accelerate.jsonl. Last, a table: measured vs pre-registered peak allocated per rank.
Expected runtime: 15 fake-world runs of 20-40 s and one accelerate run of about 60 s: 6-8 minutes in
all, so run it as two commands (--part qwen, then --part sa2va), each about 4 minutes.
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

from fsdp_runs import ACCELERATE, RUNS, TIMEOUT_S, cli_flags, plan_file  # noqa: E402

GIB = 2**30


TINY = "tests/fixtures/profiles/tiny-sa2va.yaml"
TINY_FLAGS = {"text_len": 64, "tiles": 1, "res": 64, "objects": 1, "lora_rank": 8}


def tiny(run: dict) -> dict:
    """The run on the tiny test profile (a CPU smoke test of the batch itself, --tiny)."""
    flags = {k: v for k, v in run["flags"].items() if k in ("engine", "zero", "offload")}
    return {**run, "model": TINY, "flags": {**flags, **TINY_FLAGS}}


def fake_world_run(run: dict, out: Path, plans: Path, *, device: str = "cuda") -> dict:
    """One probe subprocess; its last record, or a stand-in saying what happened."""
    from memplan.probe import records

    path = plan_file(run, plans)
    argv = [sys.executable, "-m", "memplan.cli.main", "probe", "--model", run["model"], *cli_flags(run),
            *(["--plan", str(path)] if path else []), "--steps", "2", "--out", str(out), "--device", device,
            "--timeout", str(run.get("timeout", TIMEOUT_S) - 20)]
    before = len(records.read_records(out)) if out.exists() else 0
    started = time.time()
    print(f"=== {run['name']}: {' '.join(argv[3:])}", flush=True)
    try:
        proc = subprocess.run(argv, timeout=run.get("timeout", TIMEOUT_S) + 30, capture_output=True, text=True)
        print((proc.stdout + proc.stderr)[-2500:], flush=True)
        missing = f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}"
    except subprocess.TimeoutExpired:
        missing = f"killed after {run.get('timeout', TIMEOUT_S) + 30} s"
    found = records.read_records(out) if out.exists() else []
    if len(found) > before:
        record = found[-1]
        return {"status": record["status"], "peak": record["summary"]["peak_allocated_bytes"],
                "error": record.get("error"), "wall_s": round(time.time() - started, 1)}
    return {"status": "error", "peak": None, "error": missing, "wall_s": round(time.time() - started, 1)}


def accelerate_run(out: Path, cap_gib: float) -> dict:
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
        emitted = subprocess.run(emit, timeout=120, capture_output=True, text=True)
        launch = [line for line in emitted.stdout.splitlines() if line.startswith("accelerate launch")]
        if emitted.returncode or not launch:
            return {"status": "error", "peak": None, "error": f"emit failed: {emitted.stderr[-300:]}", "wall_s": 0}
        print(f"=== {ACCELERATE['name']}: {launch[0]}", flush=True)
        result_file = out / "accelerate.jsonl"
        config_args = launch[0].split()[2:4]  # --config_file PATH (one node: no rank or master flags)
        argv = [sys.executable, "-m", "accelerate.commands.launch", *config_args, "benchmarks/accelerate_fsdp_train.py", "--plan", str(work / "fsdp.plan.yaml"),
                "--vram-cap", str(cap_gib), "--out", str(result_file), "--steps", "3"]
        proc = subprocess.run(argv, timeout=300, capture_output=True, text=True)
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
        lines.append(f"{name:30} {predicted.get('fake_world', 1):5} {measured['status']:7} "
                     f"{(meas or 0) / GIB:9.2f} {pred / GIB:9.2f} {error:>7} {measured['wall_s']:7}")
        if measured["status"] != "ok":
            lines.append(f"{'':30} {str(measured['error'])[:140]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reports/probes")))
    parser.add_argument("--predictions", type=Path, default=Path("reports/probes/fsdp-predictions.json"))
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument("--part", choices=("qwen", "sa2va"), help="half of the batch (each about 4 minutes): the "
                        "Qwen2.5-1.5B runs, or the Sa2VA-1B runs with ZeRO-3 and the accelerate run")
    parser.add_argument("--skip-accelerate", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: the tiny profile, --device cpu, "
                        "no accelerate run (the table's predictions are then not these runs')")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    predictions = json.loads(args.predictions.read_text(encoding="utf-8"))
    by_name = {run["name"]: run for run in predictions["runs"]}
    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / "fsdp-fake-world.jsonl"
    rows = []
    for run in RUNS:
        if (args.only and run["name"] not in args.only) or (args.part and not run["model"].startswith(
                "qwen" if args.part == "qwen" else "sa2va")):
            continue
        if args.tiny:
            run = tiny(run)
        rows.append((run["name"], by_name[run["name"]],
                     fake_world_run(run, records, args.out / "plans", device="cpu" if args.tiny else "cuda")))
    if not args.skip_accelerate and not args.tiny and args.part != "qwen" and (
            not args.only or ACCELERATE["name"] in args.only):
        accelerate = predictions["accelerate"]
        rows.append((ACCELERATE["name"], accelerate, accelerate_run(args.out, accelerate["vram_cap_gib"])))
    (args.out / "fsdp-batch-summary.json").write_text(
        json.dumps([{"name": n, "predicted": p["peak_allocated_bytes"], **m} for n, p, m in rows], indent=1),
        encoding="utf-8")
    print("\n" + table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
