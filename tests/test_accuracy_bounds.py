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


def test_pre_registered_sets_score_as_published():
    """docs/accuracy.md's headline: verdicts2 14 of 16, verdicts3 7 of 8, as predicted before the runs."""
    from memplan.planning.scoring import score, summarize
    from memplan.probe.records import read_records

    for batch, right, count in (("h100-verdicts2", 14, 16), ("h100-verdicts3", 7, 8)):
        spec = next(b for b in RESCORE["load_history"]()["batches"] if b["batch"] == batch)
        lines = RESCORE["legacy_prediction_lines"](spec)
        records = [r for path in spec["files"] for r in read_records(ROOT / path)]
        verdicts = summarize(score(lines, records))["verdicts"]
        assert (verdicts["right"], verdicts["count"]) == (right, count)
