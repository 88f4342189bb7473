"""benchmarks/stacks_batch.py without a GPU: a run that fails before writing a record still gets one
(the batch goes on), a run with too little budget left is skipped, and the shipped run sets are well formed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import stacks_batch  # noqa: E402


def test_failed_run_gets_a_record_and_the_batch_goes_on(tmp_path, capsys):
    from memplan.probe.records import read_records

    runset = {"schema": "memplan.runset/1", "batch": "cpu-test", "card": "h200", "steps": 2, "runs": [
        {"name": "bad-model", "model": "no-such-model", "plan": str(ROOT / "benchmarks/stacks/plans/loop-lora.yaml"),
         "flags": {"text_len": 48}, "timeout_s": 60},
        {"name": "bad-flag", "model": "qwen2.5-0.5b", "plan": str(ROOT / "benchmarks/stacks/plans/loop-lora.yaml"),
         "flags": {"text_len": 0}, "timeout_s": 60},
    ]}
    path = tmp_path / "runset.yaml"
    path.write_text(yaml.safe_dump(runset), encoding="utf-8")
    assert stacks_batch.main([str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    records = read_records(tmp_path / "out" / "records.jsonl")
    assert [r["status"] for r in records] == ["error", "error"]
    assert "no-such-model" in records[0]["error"] and "exit 2" in records[0]["error"]
    runs = [json.loads(line) for line in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    assert [r["key"] for r in runs] == ["cpu-test/bad-model", "cpu-test/bad-flag"]
    assert [r["run_id"] for r in runs] == [r["run_id"] for r in records]
    table = capsys.readouterr().out.splitlines()
    assert table[-2].startswith("bad-model") and table[-1].startswith("bad-flag")

    assert stacks_batch.main([str(path), "--out", str(tmp_path / "late"), "--budget-s", "1"]) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "late" / "records.jsonl").exists()


@pytest.mark.parametrize("name", ["runset-a.yaml", "runset-b.yaml"])
def test_shipped_run_sets_plan_and_estimate(name):
    """Every planned run builds its plan, passes the probe's stack checks and estimates (no torch)."""
    from memplan.cli.options import build_plan, resolve_profile
    from memplan.estimate.peak import estimate
    from memplan.probe.stacks import check_stack

    path = ROOT / "benchmarks" / "stacks" / name
    runset = stacks_batch.load_runs(path)
    names = [run["name"] for run in runset["runs"]]
    assert len(names) == len(set(names)) and len(names) >= 17
    for run in runset["runs"]:
        plan = build_plan(stacks_batch.plan_path(path, run["plan"]), **run["flags"])
        profile = resolve_profile(run["model"], plan)
        check_stack(profile, plan)
        assert plan.stack.kind in ("hf-trainer", "custom-loop")
        assert estimate(profile, plan).peak_allocated_bytes > 0
