#!/usr/bin/env python3
"""Run a list of probes on the GPU machine, one CLI subprocess each, and print a short table at the end.

Usage (on the GPU machine, from the repository root, after installing the wheels and the project):
    python3 scripts/gpu_probe_batch.py [--out $OUT/probes.jsonl] [--only NAME ...] [--list]

Every run calls ``memplan.cli.probe.probe_command`` (the `memplan probe` command) through a tiny typer
app in its own subprocess, so a crash or hang of one run cannot take the batch down, with a hard timeout. A run that leaves no record (killed, crashed before writing) gets a 'timeout' or
'error' record written here, so every run yields exactly one line in the JSONL file.
Edit RUNS below: each entry is a name, a model, CLI flags and a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TINY = "tests/fixtures/profiles/tiny-sa2va.yaml"
TINY_FLAGS = ["--text-len", "256", "--tiles", "2", "--res", "256", "--objects", "3", "--lora-rank", "8"]

# name, model, flags (CLI flags of `memplan probe`), timeout_s. Runs go in order; cheap ones first.
RUNS: list[dict] = [
    {"name": "tiny-pytorch", "model": TINY, "flags": [*TINY_FLAGS, "--engine", "pytorch", "--zero", "0"], "timeout": 240},
    {"name": "tiny-zero2", "model": TINY, "flags": [*TINY_FLAGS, "--zero", "2"], "timeout": 300},
    {"name": "tiny-zero3", "model": TINY, "flags": [*TINY_FLAGS, "--zero", "3"], "timeout": 300},
    {"name": "tiny-zero3-2gpu", "model": TINY, "flags": [*TINY_FLAGS, "--zero", "3"], "gpus": 2, "timeout": 300},
    {"name": "tiny-zero3-offload", "model": TINY, "flags": [*TINY_FLAGS, "--zero", "3", "--offload", "all"],
     "timeout": 400},
    {"name": "tiny-cap-oom", "model": TINY, "flags": [*TINY_FLAGS, "--engine", "pytorch", "--zero", "0",
                                                     "--vram-cap", "0.05"], "timeout": 240},
    {"name": "tiny-ddp-2gpu", "model": TINY, "flags": [*TINY_FLAGS, "--engine", "pytorch", "--zero", "0"], "gpus": 2,
     "timeout": 240},
    {"name": "tiny-zero2-2gpu", "model": TINY, "flags": [*TINY_FLAGS, "--zero", "2"], "gpus": 2, "timeout": 300},
    {"name": "1b-zero2-4k", "model": "sa2va-1b", "flags": ["--zero", "2", "--text-len", "4096"], "timeout": 420},
    {"name": "1b-zero2-4k-2gpu", "model": "sa2va-1b", "flags": ["--zero", "2", "--text-len", "4096"], "gpus": 2,
     "timeout": 480},
    {"name": "4b-official", "model": "sa2va-4b", "flags": [], "gpus": 1, "timeout": 480},
    {"name": "qwen3vl-4b-zero2", "model": "sa2va-qwen3-vl-4b", "flags": ["--zero", "2"], "timeout": 480},
    {"name": "qwen25vl-3b-zero3-2gpu", "model": "sa2va-qwen2.5-vl-3b", "flags": ["--zero", "3"], "gpus": 2,
     "timeout": 480},
]

APP = (
    "import sys, typer\n"
    "from memplan.cli.probe import probe_command\n"
    "app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)\n"
    "app.callback()(lambda: None)\n"
    "app.command('probe')(probe_command)\n"
    "app(args=sys.argv[1:], prog_name='memplan')\n"
)


def command_for(run: dict, out: Path) -> list[str]:
    """The subprocess argv of one run (the `memplan probe` command through a tiny typer app)."""
    gpus = str(run.get("gpus", 1))
    return [sys.executable, "-c", APP, "probe", "--model", run["model"], "--gpus", gpus, *run["flags"],
            "--out", str(out), "--timeout", str(run["timeout"] - 30)]


def fallback_record(run: dict, status: str, error: str) -> dict:
    """A minimal memplan.probe/1 record for a run that wrote none (killed or crashed)."""
    from memplan.spec.loading import load_profile
    from memplan.spec.plan import Plan
    from memplan.probe import records

    profile = load_profile(run["model"])
    environment = {key: None for key in ("gpu_name", "gpu_total_bytes", "driver", "cuda", "torch", "transformers",
                                         "peft", "deepspeed", "python", "hostname")}
    environment["world_size"] = int(run.get("gpus", 1))
    return records.make_record(profile=profile.model_dump(mode="json"), plan=Plan().model_dump(mode="json"),
                               ranks=[], environment=environment, command=" ".join(run["flags"]), status=status,
                               error=error, notes=[f"batch run {run['name']}: no record from the CLI; plan not resolved"])


def count_lines(path: Path) -> int:
    return sum(1 for _ in open(path, encoding="utf-8")) if path.exists() else 0


def run_one(run: dict, out: Path) -> dict:
    """Run one probe; return its record (the CLI's, or a fallback one appended here)."""
    from memplan.probe import records

    before = count_lines(out)
    started = time.time()
    print(f"=== {run['name']}: {run['model']} {' '.join(run['flags'])} (gpus {run.get('gpus', 1)})", flush=True)
    try:
        proc = subprocess.run(command_for(run, out), timeout=run["timeout"] + 90, capture_output=True, text=True)
        tail = (proc.stdout + proc.stderr)[-3000:]
        print(tail, flush=True)
        status_if_missing, error = "error", f"CLI exited with code {proc.returncode}: {tail.strip()[-300:]}"
    except subprocess.TimeoutExpired:
        status_if_missing, error = "timeout", f"batch timeout after {run['timeout'] + 90} s"
    if count_lines(out) > before:
        record = records.read_records(out)[-1]
    else:
        record = fallback_record(run, status_if_missing, error)
        records.append_record(out, record)
    record["_batch_name"], record["_wall_s"] = run["name"], round(time.time() - started, 1)
    return record


def table(results: list[dict]) -> str:
    gib = 2**30
    lines = [f"{'run':24} {'status':8} {'alloc GiB':>10} {'resv GiB':>9} {'dev GiB':>8} {'host GiB':>9} "
             f"{'peak phase':15} {'wall s':>7}"]
    for record in results:
        s = record["summary"]
        lines.append(
            f"{record['_batch_name']:24} {record['status']:8} {s['peak_allocated_bytes'] / gib:10.2f} "
            f"{s['peak_reserved_bytes'] / gib:9.2f} {s['peak_device_bytes'] / gib:8.2f} "
            f"{s['peak_host_bytes'] / gib:9.2f} {str(s['peak_phase']):15} {record['_wall_s']:7}"
        )
        if record["status"] != "ok":
            lines.append(f"{'':24} {str(record.get('error'))[:150]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reports/probes")) / "probes.jsonl")
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument("--list", action="store_true", help="print the run names and exit")
    args = parser.parse_args()
    runs = [run for run in RUNS if not args.only or run["name"] in args.only]
    if args.list:
        print("\n".join(run["name"] for run in runs))
        return 0
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    results = [run_one(run, args.out) for run in runs]
    print("\n" + table(results), flush=True)
    summary = [{"name": r["_batch_name"], "status": r["status"], **r["summary"]} for r in results]
    (args.out.parent / "batch_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
