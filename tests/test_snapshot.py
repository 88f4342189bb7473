"""Every estimate on the shipped plans and recorded probe runs is byte-identical to the golden file.

A refactor must not move a number. A change meant to move numbers regenerates the file with
`python scripts/snapshot_estimates.py > tests/golden/estimates.json` and says so in its commit.
"""

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_estimates_match_golden_file():
    golden = json.loads((ROOT / "tests" / "golden" / "estimates.json").read_text())
    current = runpy.run_path(str(ROOT / "scripts" / "snapshot_estimates.py"))["snapshot"]()
    assert current.keys() == golden.keys()
    changed = [key for key in golden if current[key] != golden[key]]
    assert not changed, f"{len(changed)} estimates moved, first: {changed[:3]}"
