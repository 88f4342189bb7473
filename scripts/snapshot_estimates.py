"""Write every estimate memplan makes on the shipped plans and the recorded probe runs, as JSON.

The golden file (tests/golden/estimates.json) guards refactors: tests/test_snapshot.py recomputes
it and asks for byte-identical numbers. Regenerate it only for a change that is meant to move
numbers, and say which in the commit:

    python scripts/snapshot_estimates.py > tests/golden/estimates.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snapshot() -> dict:
    from memplan.estimate.peak import estimate
    from memplan.spec.loading import load_calibration, load_plan, load_profile, plan_names, profile_names
    from memplan.spec.allocator import record_plan_document
    from memplan.spec.plan import Plan
    from memplan.probe.records import read_records
    from memplan.spec.profile import Profile

    calibration = load_calibration()
    out: dict[str, dict] = {}
    for plan_name in sorted(plan_names()):
        plan = load_plan(plan_name)
        for profile_name in sorted(profile_names()):
            profile = load_profile(profile_name)
            try:
                out[f"plan:{plan_name}:{profile_name}"] = estimate(profile, plan, calibration).to_dict()
            except Exception as error:  # noqa: BLE001 - an unsupported pair is recorded as such
                out[f"plan:{plan_name}:{profile_name}"] = {"error": type(error).__name__}
    for path in sorted((ROOT / "reports" / "probes").glob("*.jsonl")):
        for record in read_records(path):
            profile = Profile.model_validate(record["profile"])
            plan = Plan.model_validate(record_plan_document(record))
            out[f"record:{record['run_id']}"] = estimate(profile, plan, calibration).to_dict()
    return out


if __name__ == "__main__":
    json.dump(snapshot(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
