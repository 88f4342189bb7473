"""The step-time model: FLOP formulas by hand, data movement, the GPU catalogue, rank_check."""

import pytest

from memplan.spec.flags import plan_from_flags
from memplan.spec.gpus import catalogue, get_gpu, gpu_for
from memplan.spec.loading import load_profile
from memplan.spec.plan import Plan
from memplan.planning.steptime import UTILIZATION, rank_check, spearman, step_time, workload
from memplan.spec.vocabulary import Component

REQUIRED = {"rtx-3090", "rtx-4090", "a100-40gb", "a100-80gb", "l40s", "h100-sxm", "h200"}


def test_catalogue_has_the_required_cards_with_sources():
    specs = {spec.name: spec for spec in catalogue()}
    assert REQUIRED <= set(specs)
    for spec in specs.values():
        assert spec.datasheet.startswith("https://") and spec.bf16_tflops > 0 and spec.memory_gbps > 0
    assert specs["rtx-4090"].nvlink_gbps == 0 and specs["h100-sxm"].pcie_gbps == pytest.approx(63.0, rel=0.01)
    assert gpu_for(None, 24).name == "rtx-3090" and gpu_for(None, 80).name == "a100-80gb"


def test_full_training_is_6pt_and_frozen_forward_2pt(tiny_llm):
    full = Plan.model_validate({"engine": {"kind": "pytorch", "zero_stage": 0}, "inputs": {"text_tokens": 1, "tiles": 0},
                                "components": {"llm": {"train": "full"}}})
    llm = tiny_llm.llm
    p = llm.param_groups()["attention"] + llm.param_groups()["mlp"] + llm.vocab_size * llm.hidden_size
    flops = workload(tiny_llm, full).flops[Component.LLM]
    attention = llm.num_layers * 4 * 1 * llm.q_dim / 2  # s = 1
    assert flops.forward == pytest.approx(2 * p + attention)
    assert flops.backward == pytest.approx(4 * p + 2 * attention)
    frozen = full.model_copy(update={"mode": "inference"})
    inference = workload(tiny_llm, frozen).flops[Component.LLM]
    assert inference.backward == 0 and inference.recompute == 0 and inference.forward == pytest.approx(2 * p + attention)


def test_checkpointing_recomputes_one_forward(tiny_llm):
    plan = Plan.model_validate({"inputs": {"text_tokens": 64, "tiles": 0}})
    on = workload(tiny_llm, plan).flops[Component.LLM]
    off = workload(tiny_llm, plan.model_copy(update={"components": plan.components.model_copy(update={
        "llm": plan.components.llm.model_copy(update={"checkpointing": False})})})).flops[Component.LLM]
    head = 2 * tiny_llm.llm.vocab_size * tiny_llm.llm.hidden_size * 64
    assert off.recompute == 0 and on.recompute == pytest.approx(on.forward - head)


def test_compute_time_is_flops_over_rated_throughput():
    profile = load_profile("sa2va-4b")
    plan = plan_from_flags(None, gpus=1, vram=80, mode="inference")
    gpu = get_gpu("a100-80gb")
    step = step_time(profile, plan, gpu)
    assert step.breakdown["compute"] == pytest.approx(step.flops / (312e12 * UTILIZATION))
    assert step.breakdown["comm"] == step.breakdown["offload"] == step.breakdown["optimizer"] == 0


def test_offload_and_zero3_cost_time_and_pcie_is_slower_than_nvlink():
    profile = load_profile("sa2va-8b")
    base = plan_from_flags(None, gpus=4, vram=80)
    offloaded = plan_from_flags(None, gpus=4, vram=80, zero=3, offload="all")
    for card in ("a100-80gb", "rtx-3090"):
        gpu = get_gpu(card)
        plain, heavy = step_time(profile, base, gpu), step_time(profile, offloaded, gpu)
        assert heavy.seconds > plain.seconds and heavy.breakdown["offload"] > 0 and heavy.breakdown["optimizer"] > 0
    nvlink = step_time(profile, offloaded, get_gpu("a100-80gb")).breakdown["comm"]
    pcie = step_time(profile, offloaded.model_copy(update={"hardware": offloaded.hardware.model_copy(
        update={"gpu": "l40s"})}), get_gpu("l40s")).breakdown["comm"]
    assert pcie > nvlink


def test_spearman_and_rank_check():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1], [1]) is None
    profile = load_profile("sa2va-1b")
    records = []
    for index, kwargs in enumerate([{}, {"zero": 3, "offload": "all"}, {"micro_batch": 4}]):
        plan = plan_from_flags(None, gpus=2, vram=80, **kwargs)
        predicted = step_time(profile, plan, get_gpu("h100-sxm")).seconds
        records.append({"run_id": f"r{index}", "status": "ok", "profile": profile.model_dump(mode="json"),
                        "plan": plan.model_dump(mode="json"), "environment": {"gpu_name": "NVIDIA H100 80GB HBM3"},
                        "ranks": [{"rank": 0, "step_times_s": [99.0, 2 * predicted, 2 * predicted]}]})
    records.append({"run_id": "bad", "status": "oom", "ranks": []})
    check = rank_check(records)
    assert check.spearman == pytest.approx(1.0) and check.median_ratio == pytest.approx(2.0)
    assert [p["gpu"] for p in check.pairs] == ["h100-sxm"] * 3 and check.skipped == ["bad: status oom"]
    assert "3 records" in check.summary()
