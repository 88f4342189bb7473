#!/usr/bin/env python3
"""Write the estimate's verdicts for a verdict run set before it runs (pre-registration):

    python benchmarks/predict_verdicts.py verdicts3 > reports/probes/verdicts3-predictions.json

Each run: name, model, flags, estimated device view, what it needs under a full card, verdict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import VERDICT_COUNTS, verdict_runs  # noqa: E402

from memplan.spec.flags import plan_from_flags  # noqa: E402
from memplan.estimate.peak import estimate  # noqa: E402
from memplan.spec.loading import load_calibration, load_profile  # noqa: E402


def main() -> None:
    axes = sys.argv[1] if len(sys.argv) > 1 else "verdicts3"
    cap = 24.0
    calibration = load_calibration(None)
    runs = []
    for run in verdict_runs(cap, axes=axes, count=VERDICT_COUNTS.get(axes, 16)):
        result = estimate(load_profile(run.model), plan_from_flags(None, **run.plan_flags), calibration)
        runs.append({"name": run.name, "model": run.model, "flags": run.flags, "device_bytes": result.device_bytes,
                     "needed_bytes": result.needed_bytes, "verdict": result.verdict.value})
    print(json.dumps({"set": axes, "cap_gib": cap, "pressure_ratio": calibration.pressure_ratio,
                      "pressure_block": calibration.pressure_block, "written_before_the_runs": True, "runs": runs},
                     indent=1))


if __name__ == "__main__":
    main()
