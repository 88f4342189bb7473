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


def test_every_record_is_scored_or_unscorable():
    """No record is left out quietly: every ok/oom record of every listed file has exactly one row, in a part
    with a published bound; the others are only timeouts, errors and tiny-* fixtures."""
    from memplan.planning.protocol import scored
    from memplan.probe.records import read_records

    published = yaml.safe_load((ROOT / "reports" / "probes" / "bounds.yaml").read_text())
    rows = RESCORE["score_rows"]()
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids))
    expected = set()
    for batch in RESCORE["load_history"]()["batches"]:
        for path in batch["files"]:
            for record in read_records(ROOT / path):
                if scored(record["model"], record["status"]):
                    expected.add(str(record["run_id"]))
                else:
                    assert record["status"] not in ("ok", "oom") or str(record["model"]).startswith("tiny-")
    assert set(ids) == expected
    assert {r["part"] for r in rows} <= set(published["parts"])


def test_no_recorded_run_exceeds_its_published_bound():
    published = yaml.safe_load((ROOT / "reports" / "probes" / "bounds.yaml").read_text())
    rows = RESCORE["score_rows"]()
    assert len(rows) == sum(part["records"] for part in published["parts"].values()) >= 76 + 39
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
    bounds_table = text[text.index("| part | records | allocated bound"):]
    for part, bound in published["parts"].items():
        row = next(line for line in bounds_table.splitlines() if line.startswith(f"| {part} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        pct = lambda v: "n/a" if v is None else f"{v * 100:.1f}%"  # noqa: E731
        assert cells[1:6] == [str(bound["records"]), pct(bound["allocated_max_abs_error"]),
                              pct(bound["device_max_abs_error"]), str(bound["wrong_verdicts"]),
                              str(bound["optimistic_verdicts"])], part


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


PRE_REGISTERED_H200 = {
    # batch: (planned, recorded, allocated runs, median, max, verdicts right, verdicts, optimistic), as predicted
    "h200-batch4": (17, 11, 5, 0.007, 0.011, 8, 9, 1),
    "h200-stacks-a": (20, 20, 20, 0.013, 0.381, 0, 1, 0),
    "h200-stacks-b": (18, 8, 8, 0.121, 0.322, 0, 0, 0),
    "h200-fsdp-fake-world": (15, 5, 5, 0.508, 0.518, 0, 0, 0),
}


def test_h200_batches_score_as_published():
    """docs/accuracy.md's pre-registered H200 figures, scored against the committed predictions files (not
    today's estimate: a later estimator change must not move them), with no run that ran another plan."""
    from memplan.planning.scoring import summarize

    for batch, expected in PRE_REGISTERED_H200.items():
        spec = next(b for b in RESCORE["load_history"]()["batches"] if b["batch"] == batch)
        runs = [run for run, _ in RESCORE["pre_registered"](spec)]
        s = summarize(runs)
        a, v = s["allocated"], s["verdicts"]
        got = (s["runs"], s["recorded"], a["count"], round(a["median_abs_error"], 3), round(a["max_abs_error"], 3),
               v["right"], v["count"], v["fits_that_ran_oom"])
        assert got == expected, batch
        assert s["plan_mismatches"] == 0, batch
