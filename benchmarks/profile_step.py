#!/usr/bin/env python3
"""`memplan probe` (one GPU, in process) with its last training step under torch.profiler.

Each phase (forward, backward, optimizer_step) runs inside a ``record_function("phase:<name>")`` range, and the
last step is profiled on CPU and CUDA. Written to $PROFILE_OUT (default /tmp/profile-step), one file per run
named by --tag: ``<tag>-ops.txt`` (the top operators by self CPU and by self device time),
``<tag>-memcpy.json`` (every copy kind the step made: count, bytes where the profiler gives them, device time)
and ``<tag>-phases.json`` (the wall time of each phase range). It answers where a step's time goes, for the
step-time terms of memplan/estimate/steptime.py; the probe record itself is written as usual (--out).

Usage: PROFILE_OUT=$OUT python benchmarks/profile_step.py --tag z3-offload probe --model sa2va-1b --gpus 1 \
    --zero 3 --offload optimizer --micro-batch 2 --steps 3 --out $OUT/records.jsonl
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from memplan.probe import run as probe_run
from memplan.spec.vocabulary import Phase

OUT = Path(os.environ.get("PROFILE_OUT", "/tmp/profile-step"))
TOP = 30
STATE: dict = {"profiler": None, "steps": None, "tag": "probe"}


def _device_us(event) -> float:
    """Self device time of a key_averages row (torch >= 2.4 names it device, older releases cuda)."""
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))


def _dump(prof) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tag = STATE["tag"]
    averages = prof.key_averages()
    lines = []
    for title, key in (("self CPU", lambda e: e.self_cpu_time_total), ("self device", _device_us)):
        lines.append(f"== top {TOP} by {title} time (us), the profiled step ==")
        lines.append(f"{'name':70} {'calls':>7} {'self cpu us':>12} {'self dev us':>12}")
        for event in sorted(averages, key=key, reverse=True)[:TOP]:
            lines.append(f"{event.key[:70]:70} {event.count:7d} {event.self_cpu_time_total:12.0f} {_device_us(event):12.0f}")
    (OUT / f"{tag}-ops.txt").write_text("\n".join(lines) + "\n")
    copies: dict[str, dict] = defaultdict(lambda: {"count": 0, "device_us": 0.0, "bytes": 0})
    phases: dict[str, float] = defaultdict(float)
    for event in prof.events():
        name = event.name
        if name.startswith("phase:"):
            phases[name[6:]] += event.cpu_time_total / 1e6
        elif "Memcpy" in name or "Memset" in name:
            row = copies[name]
            row["count"] += 1
            row["device_us"] += _device_us(event) or float(getattr(event, "device_time_total", 0.0))
            row["bytes"] += int(getattr(event, "nbytes", 0) or 0)
    (OUT / f"{tag}-memcpy.json").write_text(json.dumps(copies, indent=2) + "\n")
    (OUT / f"{tag}-phases.json").write_text(json.dumps({k: round(v, 6) for k, v in phases.items()}, indent=2) + "\n")
    print("\n".join(lines[: TOP + 2]), flush=True)
    print(json.dumps({"phases_s": phases, "copies": copies}, indent=1), flush=True)


ORIGINAL_CALL = probe_run._PhaseRunner.__call__


def _call(self, phase, function, step=None):
    last = STATE["steps"] - 1
    if phase is Phase.FORWARD and step == last:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        STATE["profiler"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        STATE["profiler"].__enter__()
    with record_function(f"phase:{phase.value}"):
        value = ORIGINAL_CALL(self, phase, function, step)
    if phase is Phase.OPTIMIZER_STEP and step == last and STATE["profiler"] is not None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        prof, STATE["profiler"] = STATE["profiler"], None
        prof.__exit__(None, None, None)
        _dump(prof)
    return value


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--tag"]:
        STATE["tag"], argv = argv[1], argv[2:]
    steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 3
    STATE["steps"] = steps
    probe_run._PhaseRunner.__call__ = _call
    from memplan.cli.main import app

    app(args=argv, prog_name="memplan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
