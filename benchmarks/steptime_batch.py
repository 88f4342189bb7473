#!/usr/bin/env python3
"""Steady-state step times on one H200 for the step-time model, against predictions committed first.

    python benchmarks/steptime_batch.py --predict      # here, before the runs: writes PREDICTIONS (commit it)
    python benchmarks/steptime_batch.py                # on the GPU machine: records under $OUT, table last

Each run is `memplan probe` in its own subprocess (scripts/gpu_probe_batch.py run_one: a crash or hang
of one run cannot stop the batch) with --steps 5, so that every run has at least three steps past its
warm-up (memplan.probe.records.warmup_steps: 1, ZeRO-3 2). The table compares each record's steady
step (records.steady_step_seconds) with the committed prediction; pre-registered means: predicted by the
calibration of the commit that wrote PREDICTIONS, before the runs. Expected runtime on one H200: about 6
minutes (the ZeRO-3 runs spend about 30 s on DeepSpeed's trace-recording step).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
PREDICTIONS = ROOT / "reports" / "probes" / "steptime-h200-predictions.json"
STEPS = 5
BUDGET_S = 480  # start no run after this many seconds (the device allows 600 per command)
TINY = "tests/fixtures/profiles/tiny-sa2va.yaml"

# name, model, plan_from_flags keywords (memplan.spec.flags.plan_from_flags), timeout_s; cheap runs first
RUNS: list[dict] = [
    {"name": "tiny-zero3", "model": TINY, "plan": {"text_len": 256, "tiles": 2, "res": 256, "objects": 3,
                                                   "lora_rank": 8, "zero": 3}, "timeout": 150},
    {"name": "1b-pytorch", "model": "sa2va-1b", "plan": {"engine": "pytorch", "zero": 0}, "timeout": 150},
    {"name": "1b-zero2", "model": "sa2va-1b", "plan": {"zero": 2}, "timeout": 150},
    {"name": "1b-zero2-offload", "model": "sa2va-1b", "plan": {"zero": 2, "offload": "optimizer"}, "timeout": 180},
    {"name": "1b-zero3", "model": "sa2va-1b", "plan": {"zero": 3}, "timeout": 200},
    {"name": "1b-zero3-offload-all", "model": "sa2va-1b", "plan": {"zero": 3, "offload": "all"}, "timeout": 240},
    {"name": "4b-zero2", "model": "sa2va-4b", "plan": {"zero": 2}, "timeout": 200},
]
FLAGS = {"text_len": "--text-len", "tiles": "--tiles", "res": "--res", "objects": "--objects",
         "lora_rank": "--lora-rank", "zero": "--zero", "engine": "--engine", "offload": "--offload",
         "micro_batch": "--micro-batch"}


def probe_flags(run: dict, device: str = "cuda") -> list[str]:
    flags = [item for key, value in run["plan"].items() for item in (FLAGS[key], str(value))]
    return [*flags, "--steps", str(STEPS), *(["--device", device] if device != "cuda" else [])]


def predict() -> dict:
    """The calibrated model's step time for every run on one H200 (16 host cores), with its terms."""
    from memplan.spec.flags import plan_from_flags
    from memplan.planning.steptime import default_terms, step_time
    from memplan.spec.gpus import get_gpu
    from memplan.spec.loading import CALIBRATION_PATH, load_profile

    gpu = get_gpu("h200")
    out = {"calibration_sha256": hashlib.sha256(CALIBRATION_PATH.read_bytes()).hexdigest(), "card": gpu.name,
           "steps": STEPS, "runs": {}}
    for run in RUNS:
        profile = load_profile(run["model"])
        plan = plan_from_flags(None, gpus=1, vram=gpu.vram_gib, **run["plan"])
        step = step_time(profile, plan, gpu, terms=default_terms(), host_cores=16)
        out["runs"][run["name"]] = {"predicted_s": round(step.seconds, 4),
                                    "terms": {k: round(v, 4) for k, v in step.breakdown.items() if v}}
    return out


def table(results: list[dict], predictions: dict) -> str:
    from memplan.probe.records import steady_step_seconds

    lines = [f"{'run':22} {'status':8} {'measured s':>10} {'predicted s':>11} {'error':>7}  steps"]
    for record in results:
        name = record["_batch_name"]
        predicted = predictions["runs"].get(name, {}).get("predicted_s")
        measured = steady_step_seconds(record.get("ranks") or [], record.get("plan") or {})
        error = f"{(predicted - measured) / measured * 100:+.0f}%" if measured and predicted else ""
        steps = [round(t, 2) for t in ((record.get("ranks") or [{}])[0].get("step_times_s") or [])]
        lines.append(f"{name:22} {record['status']:8} {measured or float('nan'):10.3f} {predicted or float('nan'):11.3f} "
                     f"{error:>7}  {steps}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict", action="store_true", help=f"write {PREDICTIONS.relative_to(ROOT)} and exit")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reports/probes")) / "steptime-h200.jsonl")
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of the batch itself")
    args = parser.parse_args()
    if args.predict:
        PREDICTIONS.write_text(json.dumps(predict(), indent=2) + "\n")
        print(f"wrote {PREDICTIONS}")
        return 0
    from gpu_probe_batch import run_one

    predictions = json.loads(PREDICTIONS.read_text())
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    results = []
    started = time.time()
    for run in RUNS:
        if args.only and run["name"] not in args.only:
            continue
        if time.time() - started > BUDGET_S:
            print(f"{run['name']}: skipped, past the batch budget of {BUDGET_S} s", flush=True)
            continue
        timeout = min(run["timeout"], max(60, int(BUDGET_S + 60 - (time.time() - started))))
        try:
            results.append(run_one({"name": run["name"], "model": run["model"], "flags": probe_flags(run, args.device),
                                    "timeout": timeout}, args.out))
        except Exception as error:  # noqa: BLE001 - one failing run must not stop the batch
            print(f"{run['name']}: batch error {error}", flush=True)
    print("\n" + table(results, predictions), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
