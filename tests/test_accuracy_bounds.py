"""Regression guard (issue 12): every recorded probe run in reports/probes/ is estimated again, and no
error may exceed the bound published for its part (reports/probes/bounds.yaml, the numbers of
docs/accuracy.md). A formula change that breaks a past measurement then cannot land quietly."""

import runpy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESCORE = runpy.run_path(str(ROOT / "benchmarks" / "rescore.py"))


def test_every_probe_file_is_in_the_history():
    listed = {path for batch in RESCORE["load_history"]()["batches"] for path in batch["files"]}
    on_disk = {str(path.relative_to(ROOT)) for path in (ROOT / "reports" / "probes").glob("*.jsonl")}
    assert on_disk <= listed, f"record files missing from reports/probes/history.yaml: {sorted(on_disk - listed)}"


def test_no_recorded_run_exceeds_its_published_bound():
    published = yaml.safe_load((ROOT / "reports" / "probes" / "bounds.yaml").read_text())
    rows = RESCORE["score_rows"]()
    assert len(rows) >= 76
    problems = RESCORE["violations"](rows, published)
    assert not problems, "\n".join(problems)


def test_the_guard_fails_on_a_tighter_bound():
    rows = RESCORE["score_rows"]()
    tight = RESCORE["bounds"](rows)
    tight["parts"]["held-out"]["allocated_max_abs_error"] = 0.001
    assert RESCORE["violations"](rows, tight)


def test_docs_publish_the_bounds():
    published = yaml.safe_load((ROOT / "reports" / "probes" / "bounds.yaml").read_text())
    text = (ROOT / "docs" / "accuracy.md").read_text()
    for part, bound in published["parts"].items():
        if bound["allocated_max_abs_error"] is not None:
            assert f"{bound['allocated_max_abs_error'] * 100:.1f}%" in text, part
