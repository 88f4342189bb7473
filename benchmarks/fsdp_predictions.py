#!/usr/bin/env python3
"""Pre-register the estimates of the FSDP2 GPU batch (benchmarks/fsdp_runs.py) before it runs:

    python benchmarks/fsdp_predictions.py > reports/probes/fsdp-predictions.json

Per run: the estimate's peak allocated bytes per rank (what torch.cuda.max_memory_allocated should
read on rank 0 of the fake world), per phase, the device view and the peak moment. For the
accelerate run: the plan as accelerate runs it and the VRAM cap (the estimate's needed bytes plus
one GiB, rounded up to a whole GiB) under which the estimate says it fits.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsdp_runs import ACCELERATE, RUNS, build  # noqa: E402

from memplan.spec.flags import plan_from_flags  # noqa: E402
from memplan.estimate.peak import estimate  # noqa: E402
from memplan.integrations.accelerate_fsdp import accelerate_plan  # noqa: E402
from memplan.spec.loading import load_calibration, load_profile  # noqa: E402


def predicted(result) -> dict:
    return {"peak_allocated_bytes": result.peak_allocated_bytes, "device_bytes": result.device_bytes,
            "needed_bytes": result.needed_bytes, "peak_phase": result.peak_phase.value,
            "peak_moment": result.peak.moment.label, "phases": {p.phase.value: p.total for p in result.phases},
            "verdict": result.verdict.value}


def accelerate_cap(result) -> int:
    return math.ceil((result.needed_bytes + 2**30) / 2**30)


def main() -> None:
    calibration = load_calibration(None)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in RUNS:
            result = estimate(load_profile(run["model"]), build(run, Path(tmp)), calibration)
            runs.append({"name": run["name"], "model": run["model"], "fake_world": run["fake_world"],
                         "nodes": run.get("nodes", 1), "flags": run["flags"], **predicted(result)})
    plan = accelerate_plan(plan_from_flags(None, **ACCELERATE["flags"]))
    result = estimate(load_profile(ACCELERATE["model"]), plan, calibration)
    accelerate = {"name": ACCELERATE["name"], "model": ACCELERATE["model"], "flags": ACCELERATE["flags"],
                  "vram_cap_gib": accelerate_cap(result), **predicted(result)}
    print(json.dumps({"set": "fsdp-fake-world", "written_before_the_runs": True, "runs": runs,
                      "accelerate": accelerate}, indent=1))


if __name__ == "__main__":
    main()
