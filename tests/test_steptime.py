"""The step-time model: FLOP formulas by hand, each term's scaling, the GPU catalogue, the fit and the
rank metrics."""

import dataclasses
import hashlib
import math

import pytest

from memplan.spec.flags import plan_from_flags
from memplan.planning import stepfit
from memplan.planning.steptime import (COLLECTIVE_LATENCY_S, optimizer_phase_seconds, DDP_BUCKET_BYTES, LINK_EFFICIENCY, PINNED_EFFICIENCY, TERMS, step_time,
                                       time_step, workload)
from memplan.probe.records import steady_step_seconds, warmup_steps
from memplan.spec.record import steady_phase_seconds
from memplan.spec.calibration import KernelEfficiency, StepTimeTerms
from memplan.spec.gpus import catalogue, get_gpu, gpu_for
from memplan.spec.loading import load_profile
from memplan.spec.plan import Plan
from memplan.spec.vocabulary import Component

REQUIRED = {"rtx-3090", "rtx-4090", "a100-40gb", "a100-80gb", "l40s", "h100-sxm", "h200"}
TERMS_DEFAULT = StepTimeTerms()


def test_catalogue_has_the_required_cards_with_sources():
    specs = {spec.name: spec for spec in catalogue()}
    assert REQUIRED <= set(specs)
    for spec in specs.values():
        assert spec.datasheet.startswith("https://") and spec.bf16_tflops > 0 and spec.memory_gbps > 0
    assert specs["rtx-4090"].nvlink_gbps == 0 and specs["h100-sxm"].pcie_gbps == pytest.approx(63.0, rel=0.01)
    assert gpu_for(None, 24).name == "rtx-3090" and gpu_for(None, 80).name == "a100-80gb"


def test_topology_four_3090s_are_pcie_only():
    card = get_gpu("rtx-3090")
    assert card.interconnect == "nvlink-bridge" and card.link_kind(2) == "nvlink" and card.link_kind(4) == "pcie"
    assert card.collective_gbps(4) == card.pcie_gbps and card.pcie_gen == 4
    assert get_gpu("h100-sxm").link_kind(8) == "nvlink" and get_gpu("l40s").link_kind(2) == "pcie"


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


def test_kernel_classes_partition_the_flops_and_attention_is_quadratic():
    profile = load_profile("sa2va-1b")
    plan = plan_from_flags(None, gpus=1, vram=80)
    work = workload(profile, plan)
    assert sum(work.kernel_flops.values()) == pytest.approx(work.total_flops)
    longer = workload(profile, plan_from_flags(None, gpus=1, vram=80, text_len=2 * plan.inputs.text_tokens))
    assert longer.kernel_flops["attention"] == pytest.approx(4 * work.kernel_flops["attention"])
    assert longer.kernel_flops["vision"] == pytest.approx(work.kernel_flops["vision"])


def test_compute_term_is_flops_over_rated_rate_times_efficiency():
    profile = load_profile("sa2va-4b")
    plan = plan_from_flags(None, gpus=1, vram=80, mode="inference")
    gpu = get_gpu("a100-80gb")
    terms = StepTimeTerms(efficiency={"default": KernelEfficiency(gemm=0.5, attention=0.25, vision=0.4, sam2=0.1)})
    step = step_time(profile, plan, gpu, terms=terms)
    work = workload(profile, plan)
    assert step.breakdown["gemm"] == pytest.approx(work.kernel_flops["gemm"] / (312e12 * 0.5))
    assert step.breakdown["sam2"] == pytest.approx(work.kernel_flops["sam2"] / (312e12 * 0.1))
    assert set(step.breakdown) == set(TERMS)
    for key in ("zero3_gather", "param_offload", "grad_sync", "param_allgather", "offload_copy", "cpu_adam", "gpu_optimizer"):
        assert step.breakdown[key] == 0
    assert step.breakdown["framework"] == pytest.approx(work.module_calls * terms.module_call_s)


def test_zero3_gather_bytes_double_with_the_parameters():
    """2x parameters -> 2x gathered elements (every tensor above the threshold doubles in count)."""
    profile = load_profile("sa2va-1b")
    work = workload(profile, plan_from_flags(None, gpus=2, vram=80, zero=3))
    doubled = dataclasses.replace(work, modules={
        c: m._replace(tensors=tuple((n, 2 * k) for n, k in m.tensors)) for c, m in work.modules.items()})
    count, elements = work.gathers(100_000)
    count2, elements2 = doubled.gathers(100_000)
    assert count2 == 2 * count and elements2 == 2 * elements
    everything, _ = work.gathers(0)
    nothing = work.gathers(10**12)
    assert nothing == (0, 0) and everything > count  # the persistence threshold keeps small tensors whole


def test_zero3_bytes_term_over_the_link_and_prefetch_overlap():
    profile = load_profile("sa2va-8b")
    gpu = get_gpu("rtx-3090")  # 4 GPUs: PCIe
    plan = plan_from_flags(None, gpus=4, vram=24, zero=3)
    work = workload(profile, plan)
    no_prefetch = plan.engine.model_copy(update={"stage3_prefetch_bucket_size": 0})
    terms = StepTimeTerms(zero3_fetch_s=0.0)
    step = time_step(work, no_prefetch, num_gpus=4, gpu=gpu, terms=terms)
    count, elements = work.gathers(plan.engine.stage3_param_persistence_threshold)
    link = gpu.pcie_gbps * 1e9 * LINK_EFFICIENCY
    assert step.breakdown["zero3_gather"] == pytest.approx(3 / 4 * elements * 2 / link + count * COLLECTIVE_LATENCY_S)
    prefetched = time_step(work, plan.engine, num_gpus=4, gpu=gpu, terms=terms)
    assert prefetched.breakdown["zero3_gather"] < step.breakdown["zero3_gather"]


def test_offload_copies_and_cpu_adam_scale_with_partition_and_cores():
    profile = load_profile("sa2va-4b")
    gpu = get_gpu("h100-sxm")
    plan = plan_from_flags(None, gpus=2, vram=80, offload="optimizer")
    work = workload(profile, plan)
    one = time_step(work, plan.engine, num_gpus=2, gpu=gpu, terms=TERMS_DEFAULT, host_cores=16)
    more = time_step(work, plan.engine, num_gpus=2, gpu=gpu, terms=TERMS_DEFAULT, host_cores=32)
    four = time_step(work, plan.engine, num_gpus=4, gpu=gpu, terms=TERMS_DEFAULT, host_cores=32)
    partition = work.trainable / 2
    assert one.breakdown["offload_copy"] == pytest.approx(6 * partition / (gpu.pcie_gbps * 1e9 * PINNED_EFFICIENCY))
    assert one.breakdown["cpu_adam"] == pytest.approx(partition / (TERMS_DEFAULT.cpu_adam_params_per_core_s * 8))
    assert more.breakdown["cpu_adam"] == pytest.approx(one.breakdown["cpu_adam"] / 2)
    assert four.breakdown["offload_copy"] == pytest.approx(one.breakdown["offload_copy"] / 2)
    params = time_step(work, plan_from_flags(None, gpus=2, vram=80, zero=3, offload="all").engine, num_gpus=2, gpu=gpu,
                       terms=TERMS_DEFAULT)
    assert params.breakdown["param_offload"] > 0


def test_ddp_all_reduce_is_twice_the_reduce_scatter_and_pcie_is_slower():
    profile = load_profile("sa2va-8b")
    gpu = get_gpu("rtx-3090")
    ddp = plan_from_flags(None, gpus=4, vram=24, engine="pytorch", zero=0)
    zero2 = plan_from_flags(None, gpus=4, vram=24, zero=2).engine.model_copy(update={"overlap_comm": False})
    work = workload(profile, ddp)
    no_overlap = dataclasses.replace(work, backward_flops=0.0, recompute_flops=0.0)
    a = time_step(no_overlap, ddp.engine, num_gpus=4, gpu=gpu, terms=TERMS_DEFAULT).breakdown["grad_sync"]
    b = time_step(no_overlap, zero2, num_gpus=4, gpu=gpu, terms=TERMS_DEFAULT).breakdown["grad_sync"]
    grad_bytes = work.trainable * 2
    link = gpu.pcie_gbps * 1e9 * LINK_EFFICIENCY
    launches = math.ceil(grad_bytes / DDP_BUCKET_BYTES) - math.ceil(work.trainable / zero2.reduce_bucket_size)
    assert a - b == pytest.approx(3 / 4 * grad_bytes / link + launches * COLLECTIVE_LATENCY_S)
    nvlink = time_step(no_overlap, zero2, num_gpus=2, gpu=gpu, terms=TERMS_DEFAULT).breakdown["grad_sync"]
    assert nvlink < b  # 2 x 3090 over the bridge, 4 over PCIe


def test_throughput_epoch_and_cost():
    profile = load_profile("sa2va-1b")
    plan = plan_from_flags(None, gpus=4, vram=80, micro_batch=2)
    step = step_time(profile, plan, get_gpu("h100-sxm"))
    assert step.samples_per_s == pytest.approx(8 / step.seconds)
    assert step.tokens_per_s == pytest.approx(8 * plan.inputs.text_tokens / step.seconds)
    assert step.epoch_seconds(800) == pytest.approx(100 * step.seconds)
    assert step.epoch_cost(800, 2.0) == pytest.approx(100 * step.seconds / 3600 * 4 * 2.0)
    assert step.to_dict(800, 2.0)["epoch_cost"] == pytest.approx(step.epoch_cost(800, 2.0))


def test_steady_step_excludes_warmup_and_takes_the_slowest_rank():
    zero2 = {"engine": {"kind": "deepspeed", "zero_stage": 2}}
    zero3 = {"engine": {"kind": "deepspeed", "zero_stage": 3}}
    ranks = [{"step_times_s": [9.0, 1.0, 3.0, 2.0]}, {"step_times_s": [9.0, 1.0, 4.0, 5.0]}]
    assert warmup_steps(zero2) == 1 and warmup_steps(zero3) == 2
    assert steady_step_seconds(ranks, zero2) == pytest.approx(4.0)  # median(1, 4, 5) on rank 1
    assert steady_step_seconds(ranks, zero3) == pytest.approx(4.5)
    assert steady_step_seconds([{"step_times_s": [9.0]}], zero2) is None


def test_steady_phase_seconds_per_phase_after_warmup_slowest_rank():
    zero2 = {"engine": {"kind": "deepspeed", "zero_stage": 2}}
    step = lambda f, b, o: {"forward": f, "backward": b, "optimizer_step": o}  # noqa: E731
    ranks = [{"phase_times_s": [step(9, 9, 9), step(1, 2, 3), step(1, 2, 5), step(1, 4, 4)]},
             {"phase_times_s": [step(9, 9, 9), step(2, 1, 1), step(2, 1, 1), step(2, 1, 1)]}]
    assert steady_phase_seconds(ranks, zero2) == {"forward": 2.0, "backward": 2.0, "optimizer_step": 4.0}
    assert steady_phase_seconds([{"step_times_s": [1.0, 2.0]}], zero2) is None  # records before phase times


def test_optimizer_phase_is_the_step_side_of_the_terms():
    """CPU Adam, the GPU step and the post-step all-gather are in engine.step(); of the offload copies only
    the 2-byte 16-bit partition that goes up after the CPU step (the 4-byte gradients go down in backward)."""
    breakdown = {"gemm": 1.0, "cpu_adam": 0.5, "offload_copy": 0.3, "gpu_optimizer": 0.0, "param_allgather": 0.1}
    assert optimizer_phase_seconds(breakdown) == pytest.approx(0.5 + 0.1 + 0.3 / 3)
    profile = load_profile("sa2va-1b")
    offload = step_time(profile, plan_from_flags(None, gpus=1, vram=80, zero=2, offload="optimizer"), get_gpu("h100-sxm"))
    plain = step_time(profile, plan_from_flags(None, gpus=1, vram=80, zero=2), get_gpu("h100-sxm"))
    assert offload.optimizer_step_seconds > offload.breakdown["cpu_adam"] > 0
    assert plain.optimizer_step_seconds == pytest.approx(plain.breakdown["gpu_optimizer"])
    assert offload.to_dict()["optimizer_step_seconds"] == pytest.approx(offload.optimizer_step_seconds)


def test_spearman_and_accuracy_metrics():
    assert stepfit.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert stepfit.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stepfit.spearman([1, 2, 2], [1, 2, 3]) == pytest.approx(0.866, abs=1e-3)  # ties share ranks
    assert stepfit.spearman([1], [1]) is None and stepfit.spearman([1, 1], [1, 2]) is None
    rows = [{"predicted_s": p, "measured_s": m, "ratio": m / p} for p, m in ((1, 1.2), (1, 1.45), (1, 2.0), (2, 1.0))]
    metrics = stepfit.accuracy(rows)
    assert metrics["within_30"] == pytest.approx(0.25) and metrics["within_50"] == pytest.approx(0.75)
    assert metrics["max_abs_error"] == pytest.approx(1.0) and metrics["median_ratio"] == pytest.approx(1.325)


def test_split_rule_is_sha256_first_byte():
    for run_id in ("a", "b", "20261127T090525Z-56477243"):
        assert stepfit.is_calibration(run_id) == (hashlib.sha256(run_id.encode()).digest()[0] < 85)


def _records(profile, plans, terms, factor):
    out = []
    for index, plan in enumerate(plans):
        predicted = step_time(profile, plan, get_gpu("h100-sxm"), terms=terms).seconds
        out.append({"run_id": f"r{index}", "status": "ok", "profile": profile.model_dump(mode="json"),
                    "plan": plan.model_dump(mode="json"), "environment": {"gpu_name": "NVIDIA H100 80GB HBM3"},
                    "vram_cap_bytes": None,
                    "ranks": [{"rank": 0, "step_times_s": [99.0, 99.0, factor * predicted, factor * predicted]}]})
    return out


def test_rank_check_on_records():
    profile = load_profile("sa2va-1b")
    plans = [plan_from_flags(None, gpus=2, vram=80, **kw) for kw in ({}, {"zero": 3, "offload": "all"}, {"micro_batch": 4})]
    records = _records(profile, plans, TERMS_DEFAULT, 2.5) + [{"run_id": "bad", "status": "oom", "ranks": []}]
    check = stepfit.rank_check(records, TERMS_DEFAULT)
    assert check.spearman == pytest.approx(1.0) and check.median_ratio == pytest.approx(2.5)
    assert [p["gpu"] for p in check.pairs] == ["h100-sxm"] * 3 and check.skipped == ["bad: status oom"]
    assert "3 records" in check.summary() and check.metrics["within_50"] == 0


def test_a_fake_world_record_is_not_timed():
    """Rank 0 of a fake world measures the plan's memory, but its collectives move no data: its step is not the
    N-GPU plan's step, so the step-time check skips it (it was scored as one, 0 of 5 within 50% at N = 1024)."""
    profile = load_profile("sa2va-1b")
    plan = plan_from_flags(None, gpus=1024, vram=80, engine="fsdp2")
    (record,) = _records(profile, [plan], TERMS_DEFAULT, 1.0)
    runs, skipped = stepfit.timed_runs([record, {**record, "run_id": "fake", "fake_world": 1024}])
    assert len(runs) == 1 and skipped == ["fake: rank 0 of a fake world of 1024, not a step of the plan"]


def test_fit_recovers_known_terms():
    """Records generated from known terms: the fit finds them again (and the host terms it can see)."""
    profile = load_profile("sa2va-1b")
    truth = StepTimeTerms(efficiency={"default": KernelEfficiency(gemm=0.2, attention=0.25, vision=0.35, sam2=0.2)},
                          module_call_s=150e-6, zero3_fetch_s=500e-6)
    plans = [plan_from_flags(None, gpus=g, vram=80, **kw) for g in (1, 2) for kw in (
        {}, {"zero": 3}, {"text_len": 8192}, {"micro_batch": 4}, {"zero": 3, "micro_batch": 8, "text_len": 8192})]
    runs, _ = stepfit.timed_runs(_records(profile, plans, truth, 1.0))
    fitted = stepfit.fit(runs, StepTimeTerms())
    assert fitted.module_call_s == pytest.approx(150e-6, rel=0.05)
    assert fitted.zero3_fetch_s == pytest.approx(500e-6, rel=0.05)
    assert fitted.in_sample["within_30"] == 1.0 and fitted.records == len(plans)


def test_fit_takes_cpu_adam_from_the_optimizer_phase():
    """Offloaded records made from known terms (CPU Adam 4x the default rate, another module-call cost),
    each timing its phases: the fit finds the CPU Adam rate from the optimizer-step rows."""
    profile = load_profile("sa2va-1b")
    base = StepTimeTerms()
    truth = base.model_copy(update={"cpu_adam_params_per_core_s": 4 * base.cpu_adam_params_per_core_s,
                                    "module_call_s": 1.3 * base.module_call_s})
    plans = [plan_from_flags(None, gpus=1, vram=80, zero=z, offload=o, text_len=t)
             for z, o in ((2, "optimizer"), (3, "all")) for t in (2048, 8192)]
    records = _records(profile, plans, truth, 1.0)
    for record, plan in zip(records, plans):
        step = step_time(profile, plan, get_gpu("h100-sxm"), terms=truth)
        phases = {"forward": 0.0, "backward": step.seconds - step.optimizer_step_seconds,
                  "optimizer_step": step.optimizer_step_seconds}
        record["ranks"][0]["phase_times_s"] = [phases] * 4
    runs, _ = stepfit.timed_runs(records)
    assert [run.measured_optimizer_s for run in runs] == [r["ranks"][0]["phase_times_s"][0]["optimizer_step"] for r in records]
    fitted = stepfit.fit(runs, base)
    assert fitted.cpu_adam_params_per_core_s == pytest.approx(truth.cpu_adam_params_per_core_s, rel=0.05)
    pair = stepfit.pairs(runs, fitted)[0]
    assert pair["predicted_optimizer_s"] == pytest.approx(pair["measured_optimizer_s"], rel=0.05)


def test_compare_prints_epoch_cost_and_the_terms(tmp_path):
    import json

    from typer.testing import CliRunner

    from memplan.cli.main import app

    result = CliRunner().invoke(app, ["compare", "--format", "json", "--out", str(tmp_path),
                                      "--dataset-samples", "1000", "--price", "2.0"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    baseline, plan_b = document["plans"][0], next(p for p in document["plans"] if p["plan"] == "plan-b")
    assert plan_b["step_breakdown_seconds"]["zero3_gather"] > 0 and plan_b["slowdown"] > 1
    assert baseline["epoch_seconds"] == pytest.approx(1000 / baseline["samples_per_s"], rel=1e-3)
    assert baseline["epoch_cost"] == pytest.approx(baseline["epoch_seconds"] / 3600 * 4 * 2.0, rel=1e-2)
    assert not any("lower bound" in note for note in document["notes"])


def test_validate_reports_step_time(tmp_path):
    import json

    from typer.testing import CliRunner

    from memplan.cli.main import app

    profile = load_profile("sa2va-1b")
    plan = plan_from_flags(None, gpus=1, vram=80)
    records = _records(profile, [plan], TERMS_DEFAULT, 1.0)
    records[0].update({"schema": "memplan.probe/1", "summary": {"peak_allocated_bytes": 2**34, "peak_reserved_bytes": 2**34,
                       "peak_device_bytes": 2**34, "peak_host_bytes": 2**33, "peak_phase": "backward"}})
    records[0]["ranks"][0]["phases"] = {"backward": {"max_allocated_bytes": 2**34, "max_reserved_bytes": 2**34,
                                                     "device_used_bytes": 2**34, "host_rss_bytes": 2**33}}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(records[0]) + "\n")
    result = CliRunner().invoke(app, ["validate", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    step = json.loads(result.output)["step_time"]
    assert step["summary"]["runs"] == 1 and step["records"][0]["measured_s"] > 0


def test_estimate_gives_step_time_throughput_and_epoch():
    import json

    from typer.testing import CliRunner

    from memplan.cli.main import app

    result = CliRunner().invoke(app, ["estimate", "--gpus", "2", "--vram", "80", "--format", "json",
                                      "--dataset-samples", "500"])
    assert result.exit_code == 0, result.output
    step = json.loads(result.stdout)["step_time"]
    assert step["samples_per_s"] == pytest.approx(2 / step["seconds"])
    assert step["epoch_seconds"] == pytest.approx(500 / step["samples_per_s"])
    assert set(step["breakdown"]) == set(TERMS)


def test_link_type_from_nvidia_smi_topology():
    from memplan.probe.hostinfo import link_from_topology

    nvlink = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV18\t0-63\nGPU1\tNV18\t X \t0-63\n"
    pcie = "\tGPU0\tGPU1\tGPU2\nGPU0\t X \tPIX\tSYS\nGPU1\tPIX\t X \tSYS\nGPU2\tSYS\tSYS\t X \n"
    assert link_from_topology(nvlink) == "nvlink" and link_from_topology(pcie) == "pcie"
    assert link_from_topology("\tGPU0\nGPU0\t X \n") is None and link_from_topology(None) is None


def test_cpu_model_from_cpuinfo():
    from memplan.probe.hostinfo import HOST_FACTS, cpu_model, host_facts

    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+  \nflags\t: fpu\n"
    assert cpu_model(text) == "Intel(R) Xeon(R) Platinum 8480+"
    assert "cpu_model" in HOST_FACTS and set(host_facts()) == set(HOST_FACTS)


def test_host_dispatch_cost_is_measured_per_call():
    pytest.importorskip("torch")
    from memplan.probe.environment import DISPATCH_KEYS, host_dispatch_us

    few, many = host_dispatch_us(calls=200, repeats=2), host_dispatch_us(calls=2_000, repeats=2)
    assert set(few) == set(many) == set(DISPATCH_KEYS)
    # per call, not per loop: ten times the calls does not give ten times the figure
    assert all(0 < many[key] < 1_000 and many[key] < 5 * few[key] for key in DISPATCH_KEYS)
    assert many["host_module_us"] > many["host_op_us"]  # a module call is an op plus Module.__call__


def test_host_adam_rate_is_per_parameter():
    """Parameters per second, not per pass: four times the parameters take about four times as long."""
    pytest.importorskip("torch")
    from memplan.probe.environment import HOST_RATE_KEYS, host_adam_rate

    small, large = host_adam_rate(elements=1 << 20, repeats=2), host_adam_rate(elements=1 << 22, repeats=2)
    assert set(small) == set(large) == set(HOST_RATE_KEYS) and large["host_threads"] >= 1
    assert 1 < large["host_adam_mparams_s"] < 100_000
    assert large["host_adam_mparams_s"] / small["host_adam_mparams_s"] < 3  # a pass 4x the size is not ~free


def test_gpu_limits_from_nvidia_smi():
    from memplan.probe.hostinfo import GPU_LIMITS, gpu_limits

    assert gpu_limits("1980, 700.00, 700.00\n1980, 700.00, 700.00\n") == {
        "gpu_sm_clock_max_mhz": 1980.0, "gpu_power_limit_w": 700.0, "gpu_power_max_limit_w": 700.0}
    capped = gpu_limits("1980, 500.00, [N/A]\n")
    assert capped["gpu_power_limit_w"] == 500.0 and capped["gpu_power_max_limit_w"] is None
    assert gpu_limits(None) == gpu_limits("") == dict.fromkeys(GPU_LIMITS)


def test_environment_keeps_the_dispatch_cost_and_load_measured_before_the_run(monkeypatch):
    """The probe measures the dispatch cost and the host's load before the model exists and hands them over
    (after a ZeRO-3 run the same loop measured about 6x slower: memplan.probe.environment.host_dispatch_us;
    the load after the run would count the probe's own steps)."""
    torch = pytest.importorskip("torch")
    from memplan.probe import environment as env

    monkeypatch.setattr(env, "before_run", lambda: pytest.fail("measured again after the run"))
    given = {"host_op_us": 1.25, "host_module_us": 4.5, "host_adam_mparams_s": 410.0, "host_threads": 16,
             "host_load_1m": 3.5, "gpu_processes": 1}
    record = env.environment(torch.device("cpu"), 1, before=given)
    assert {key: record[key] for key in env.BEFORE_RUN_KEYS} == given
    assert set(env.fallback_environment(1)) == set(record)  # the launcher's fallback has the same keys


def test_host_load_reads_the_load_average_and_the_gpu_processes(monkeypatch):
    from memplan.probe import hostinfo

    assert hostinfo.gpu_processes("12345\n67890\n\n") == 2 and hostinfo.gpu_processes("") == 0
    assert hostinfo.gpu_processes(None) is None  # no nvidia-smi: unknown, not zero
    monkeypatch.setattr(hostinfo.os, "getloadavg", lambda: (3.14159, 2.0, 1.0))
    monkeypatch.setattr(hostinfo, "_nvidia_smi", lambda *args: "4242\n" if "--query-compute-apps=pid" in args else None)
    assert hostinfo.host_load() == {"host_load_1m": 3.14, "gpu_processes": 1}
    monkeypatch.setattr(hostinfo.os, "getloadavg", lambda: (_ for _ in ()).throw(OSError("no load average")))
    assert hostinfo.host_load()["host_load_1m"] is None
