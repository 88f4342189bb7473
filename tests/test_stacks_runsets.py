"""The stack run sets (benchmarks/stacks/runset-*.yaml, run by benchmarks/run_runset.py): every planned
run loads through the accuracy protocol, builds its plan, passes the probe's stack checks and estimates
(no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memplan.spec.flags import plan_from_flags, resolve_profile
from memplan.estimate.peak import estimate
from memplan.planning.protocol import load_runset, resolve_plan_file
from memplan.probe.stacks import check_stack

STACKS = Path(__file__).resolve().parents[1] / "benchmarks" / "stacks"


@pytest.mark.parametrize("name", ["runset-a.yaml", "runset-b.yaml"])
def test_stack_run_sets_plan_check_and_estimate(name):
    path = STACKS / name
    runset = load_runset(path)
    assert len(runset.runs) >= 17 and runset.card == "h200"
    for run in runset.runs:
        plan = plan_from_flags(resolve_plan_file(path, run.plan), **run.flags)
        profile = resolve_profile(run.model, plan)
        check_stack(profile, plan)
        assert plan.stack.kind in ("hf-trainer", "custom-loop")
        assert estimate(profile, plan).peak_allocated_bytes > 0


def test_run_sets_cover_the_issue():
    """Trainer and the loop, LoRA and full, bf16 and fp32 weights, checkpointing on and off, eager and
    SDPA, InternVL 1-13 tiles, Qwen2.5 0.5B-3B, ZeRO-2/3 and optimizer offload: at least 30 runs."""
    plans = []
    for name in ("runset-a.yaml", "runset-b.yaml"):
        path = STACKS / name
        for run in load_runset(path).runs:
            plans.append((run, plan_from_flags(resolve_plan_file(path, run.plan), **run.flags)))
    assert len(plans) >= 30
    seen = lambda test: any(test(run, plan) for run, plan in plans)  # noqa: E731
    assert seen(lambda r, p: p.stack.kind == "custom-loop") and seen(lambda r, p: p.stack.kind == "hf-trainer")
    assert seen(lambda r, p: p.components.llm.train == "full") and seen(lambda r, p: p.components.llm.train == "lora")
    assert seen(lambda r, p: p.precision.weights_fp32) and seen(lambda r, p: not p.precision.weights_fp32)
    assert seen(lambda r, p: p.components.llm.checkpointing) and seen(lambda r, p: not p.components.llm.checkpointing)
    assert seen(lambda r, p: p.attention == "eager") and seen(lambda r, p: p.attention == "sdpa")
    assert {p.inputs.tiles for r, p in plans if r.model.startswith("internvl")} >= {1, 6, 13}
    assert {r.model for r, p in plans} >= {"qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "internvl2.5-1b", "internvl2.5-4b"}
    engines = {(p.engine.zero_stage, p.engine.offload_optimizer) for r, p in plans if p.engine.kind == "deepspeed"}
    assert engines >= {(2, "none"), (3, "none"), (2, "cpu"), (3, "cpu")}


@pytest.mark.parametrize("name", ["runset-c.yaml", "runset-d.yaml"])
def test_later_stack_run_sets_plan_check_and_estimate(name):
    """stacks-c/-d: every run builds its plan (rtx-3090/GiB caps as `memplan predict` reads them), passes the
    stack checks and the probe's input shapes, and estimates; accelerate joins Trainer and the loop."""
    from memplan.cli.protocol_cmd import planned_plan
    from memplan.probe.shapes import input_shapes

    path = STACKS / name
    runset = load_runset(path)
    assert runset.card == "h200"
    for run in runset.runs:
        plan = planned_plan(runset, run, path)
        profile = resolve_profile(run.model, plan)
        check_stack(profile, plan)
        input_shapes(profile, plan)
        assert plan.stack.kind in ("hf-trainer", "custom-loop", "accelerate")
        assert estimate(profile, plan).peak_allocated_bytes > 0



def test_stacks_d_predictions_straddle_the_3090():
    """stacks-d's pre-registered predictions (reports/probes/predictions/stacks-d.jsonl, one per planned run,
    in order): the rtx-3090-capped verdict runs are at least 6, needed/capacity within +-5%, as many
    predicted to fit as to run out, among the first six too (the budget may cut the tail), over Trainer and
    the custom loop and DeepSpeed. Read from the committed file, so a later estimator change does not move it."""
    from memplan.planning.protocol import read_predictions

    path = STACKS / "runset-d.yaml"
    runset = load_runset(path)
    lines = read_predictions(STACKS.parents[1] / "reports" / "probes" / "predictions" / "stacks-d.jsonl")
    assert [line["run_key"] for line in lines] == [runset.key(run) for run in runset.runs]
    capped = [line for line in lines if line["vram_cap"] == "rtx-3090"]
    assert all(line["purpose"] == "verdict" for line in capped)
    ratios = [line["predicted"]["needed_bytes"] / line["capacity_bytes"] for line in capped]
    assert len(ratios) >= 6 and all(abs(r - 1) <= 0.05 for r in ratios)
    for part in (capped[:6], capped):
        assert sum(line["predicted"]["verdict"] == "fits" for line in part) * 2 == len(part)
    assert all((r <= 1) == (line["predicted"]["verdict"] == "fits") for r, line in zip(ratios, capped))
    assert {line["plan"]["stack"]["kind"] for line in capped} >= {"hf-trainer", "custom-loop"}
    assert any(line["plan"]["engine"]["kind"] == "deepspeed" for line in capped)
