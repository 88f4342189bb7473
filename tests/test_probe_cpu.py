"""The probe's CPU tier: the tiny Sa2VA profile built for real, trained 3 steps with the storage tracker.

Fast (one process, tiny widths, fp32 on the CPU); the GPU tier is tests/test_probe_gpu.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memplan.integrations.deepspeed import deepspeed_config, launch_command
from memplan.spec.loading import InputError, load_profile
from memplan.spec.plan import Plan
from memplan.probe import records
from memplan.spec.profile import Profile

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

TINY = Path(__file__).parent / "fixtures" / "profiles" / "tiny-sa2va.yaml"
SMALL_INPUTS = {"micro_batch": 2, "text_tokens": 96, "tiles": 2, "frames": 0, "sam2_resolution": 64, "objects": 3}


def tiny() -> Profile:
    return load_profile(str(TINY))


def cpu_plan(**sections) -> Plan:
    """A plain-PyTorch fp32 plan with tiny inputs; sections override (components merge per component)."""
    document = {"engine": {"kind": "pytorch", "zero_stage": 0}, "precision": {"compute": "fp32"},
                "inputs": dict(SMALL_INPUTS),
                "components": {"llm": {"train": "lora", "checkpointing": True, "lora": {"rank": 8, "alpha": 16},
                                       "modules_to_save": ["embed_tokens", "lm_head"]}}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return Plan.model_validate(document)


@pytest.fixture(scope="module")
def tiny_record():
    from memplan.probe.run import run_probe

    return run_probe(tiny(), cpu_plan(), steps=3, device="cpu", command="pytest")


# --------------------------------------------------------------------------- building and the plan


def test_built_model_matches_profile_counts():
    from memplan.probe.apply import parameter_counts
    from memplan.probe.build import build_model

    profile, plan = tiny(), cpu_plan()
    built = parameter_counts(build_model(profile, plan), trainable=True)  # nothing frozen yet
    assert built == profile.component_params()  # memory_params: 256 = Sam2Model.no_memory_embedding


def test_lora_modules_to_save_and_freezing_counts():
    from memplan.probe.apply import apply_plan, parameter_counts
    from memplan.probe.build import build_model

    profile, plan = tiny(), cpu_plan()
    model = apply_plan(build_model(profile, plan), plan)
    trainable = parameter_counts(model, trainable=True)
    frozen = parameter_counts(model, trainable=False)
    llm = profile.llm
    # LoRA on all 7 linears + peft's trainable copies of embed_tokens and lm_head (tied: two copies).
    assert trainable["llm"] == llm.lora_params(8, None) + 2 * llm.embedding_params
    assert frozen["llm"] == llm.param_count()
    params = profile.component_params()
    assert trainable["projector"] == params["projector"]
    assert trainable["seg_head"] == params["seg_head"]
    assert trainable["sam2_decoder"] == params["sam2_decoder"]
    assert "vision" not in trainable and frozen["vision"] == params["vision"]
    assert frozen["sam2_encoder"] == params["sam2_encoder"]


def test_lora_targets_subset_and_full_llm():
    from memplan.probe.apply import apply_plan, parameter_counts
    from memplan.probe.build import build_model

    profile = tiny()
    plan = cpu_plan(components={"llm": {"train": "lora", "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}}})
    model = apply_plan(build_model(profile, plan), plan)
    assert parameter_counts(model, trainable=True)["llm"] == profile.llm.lora_params(4, ("q_proj", "v_proj"))
    plan = cpu_plan(components={"llm": {"train": "full"}, "projector": {"train": "frozen"}})
    model = apply_plan(build_model(profile, plan), plan)
    trainable = parameter_counts(model, trainable=True)
    assert trainable["llm"] == profile.llm.param_count() and "projector" not in trainable


def test_master_weights_and_upcast_dtypes():
    from memplan.probe.apply import apply_plan
    from memplan.probe.build import build_model

    plan = cpu_plan(precision={"compute": "bf16", "master_weights": True, "llm_fp32_upcast": True})
    model = apply_plan(build_model(tiny(), plan), plan)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert all(dtypes[n] == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    assert all(d == torch.float32 for n, d in dtypes.items() if n.startswith("llm."))  # upcast
    assert dtypes["vision.embeddings.cls_token"] == torch.bfloat16  # frozen, compute dtype


def test_sub_combinations_train():
    """LLM alone, vision+projector+LLM, SAM2 alone: each builds, and its loss has a gradient."""
    from memplan.probe.apply import apply_plan
    from memplan.probe.build import build_model, make_batch

    profile = tiny()
    for parts in (("llm",), ("vision", "projector", "llm"), ("sam2",), ("sam2", "seg_head")):
        sub = Profile(name="sub", source="test", **{part: getattr(profile, part) for part in parts})
        plan = cpu_plan()
        model = apply_plan(build_model(sub, plan), plan)
        loss = model(make_batch(model, sub, "cpu", torch.float32))
        loss.backward()
        assert loss.ndim == 0 and any(p.grad is not None for p in model.parameters()), parts


# --------------------------------------------------------------------------- measuring


def test_run_probe_record_round_trip(tiny_record, tmp_path):
    record = tiny_record
    assert record["status"] == "ok", record["error"]
    assert record["schema"] == records.SCHEMA and record["model"] == "tiny-sa2va"
    (rank,) = record["ranks"]
    assert set(rank["phases"]) == {"init", "forward", "backward", "optimizer_step"}
    assert len(rank["step_times_s"]) == 3 and len(rank["step_phases"]) == 3
    assert len(rank["phase_times_s"]) == 3  # the three timed phases of each step add up to the step
    for parts, total in zip(rank["phase_times_s"], rank["step_times_s"]):
        assert set(parts) == {"forward", "backward", "optimizer_step"} and all(v > 0 for v in parts.values())
        assert sum(parts.values()) == pytest.approx(total, abs=1e-5)
    for reading in rank["phases"].values():
        assert all(isinstance(value, int) for value in reading.values())
        assert all(reading[key] > 0 for key in records.PHASE_FIELDS)  # the pressure fields are 0 on CPU
    categories = rank["categories"]
    # AdamW: exp_avg and exp_avg_sq per parameter, plus one 4-byte step tensor each
    assert categories["gradients"] > 0 and 0 <= categories["optimizer_state"] - 2 * categories["gradients"] < 4096
    # fp32 params and grads; SAM2's prompt encoder and iou/object heads train but get no gradient here
    assert categories["gradients"] <= categories["trainable_weights"] < categories["gradients"] + 2**21
    summary = record["summary"]
    assert summary["peak_allocated_bytes"] == max(r["max_allocated_bytes"] for r in rank["phases"].values())
    path = tmp_path / "probes.jsonl"
    records.append_record(path, record)
    records.append_record(path, record)
    assert records.read_records(path) == [json.loads(json.dumps(record))] * 2


def test_checkpointing_lowers_forward_peak():
    from memplan.probe.run import measure_rank

    profile = Profile(name="llm", source="test", llm=tiny().llm.model_copy(update={"num_layers": 4}))
    peaks = {}
    for checkpointing in (False, True):
        plan = cpu_plan(inputs={**SMALL_INPUTS, "text_tokens": 512, "micro_batch": 1},
                        components={"llm": {"train": "lora", "checkpointing": checkpointing, "lora": {"rank": 8}}})
        result = measure_rank(profile, plan, steps=1, device="cpu")
        assert result.status == "ok", result.error
        peaks[checkpointing] = result.phases["forward"]["max_allocated_bytes"]
    assert peaks[True] < peaks[False]


def test_vram_cap_gives_oom_result():
    from memplan.probe.run import run_probe

    record = run_probe(tiny(), cpu_plan(), steps=1, device="cpu", vram_cap_gib=0.01, command="pytest")
    assert record["status"] == "oom"
    assert record["oom"]["phase"] == "init" and record["oom"]["rank"] == 0
    assert record["oom"]["requested_bytes"] > 0 and record["vram_cap_bytes"] == round(0.01 * 2**30)
    assert "init" in record["ranks"][0]["phases"]


def test_bad_plan_is_an_error_result():
    from memplan.probe.run import run_probe

    plan = cpu_plan(components={"llm": {"train": "frozen"}, "projector": {"train": "frozen"},
                                "sam2_decoder": {"train": "frozen"}, "seg_head": {"train": "frozen"}})
    record = run_probe(tiny(), plan, steps=1, device="cpu", command="pytest")
    assert record["status"] == "error" and "trains nothing" in record["error"]


def test_requested_bytes_parsing():
    from memplan.probe.run import requested_bytes

    assert requested_bytes("CUDA out of memory. Tried to allocate 2.03 GiB. GPU 0") == round(2.03 * 2**30)
    assert requested_bytes("Tried to allocate 20.00 MiB") == 20 * 2**20
    assert requested_bytes("no size here") is None


def test_tracker_counts_storages_once():
    from memplan.probe.tracker import StorageTracker

    with StorageTracker() as tracker:
        a = torch.zeros(1000)
        view = a.view(10, 100)
        assert tracker.current() == 4000
        b = a * 2
        assert tracker.current() == 8000
        del b, a
        assert tracker.current() == 4000  # the view keeps the storage alive
        del view
        assert tracker.current() == 0 and tracker.peak() == 8000
        tracker.reset_peak()
        assert tracker.peak() == 0


# --------------------------------------------------------------------------- records


def test_torn_last_line_is_skipped(tiny_record, tmp_path):
    path = tmp_path / "probes.jsonl"
    records.append_record(path, tiny_record)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(tiny_record)[:100])  # a writer killed mid-line
    with pytest.warns(UserWarning, match="torn last line"):
        assert len(records.read_records(path)) == 1


def test_bad_line_in_the_middle_raises(tiny_record, tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text("{not json\n" + json.dumps(tiny_record) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"probes.jsonl:1: not a JSON record"):
        records.read_records(path)


def test_foreign_schema_raises(tiny_record, tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text(json.dumps({**tiny_record, "schema": "other/2"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"probes.jsonl:1: schema 'other/2' is not memplan.probe/1"):
        records.read_records(path)
    path.write_text(json.dumps({"run_id": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="schema None is not"):
        records.read_records(path)


# --------------------------------------------------------------------------- DeepSpeed configs


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_per_stage(stage):
    plan = Plan.model_validate({"engine": {"kind": "deepspeed", "zero_stage": stage}, "inputs": {"micro_batch": 2}})
    config = deepspeed_config(plan)
    zero = config["zero_optimization"]
    assert zero["stage"] == stage and config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 1 and config["gradient_clipping"] == 1.0
    assert config["bf16"] == {"enabled": True} and config["fp16"]["enabled"] is False
    assert zero["overlap_comm"] is (stage == 3) and zero["contiguous_gradients"] is True
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 500_000_000
    assert ("stage3_prefetch_bucket_size" in zero) is (stage == 3)
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert config["optimizer"] == {"type": "AdamW", "params": {
        "lr": 4e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.05,
        "torch_adam": True, "adam_w_mode": True, "foreach": True}}


def test_deepspeed_config_offload_and_optimizers():
    plan = Plan.model_validate({"engine": {"kind": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu",
                                           "offload_params": "cpu", "overlap_comm": False},
                                "optimizer": {"kind": "cpu_adam"}, "precision": {"compute": "fp16"}})
    config = deepspeed_config(plan)
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["overlap_comm"] is False and config["fp16"]["enabled"] is True
    assert "torch_adam" not in config["optimizer"]["params"]  # DeepSpeedCPUAdam
    fused = deepspeed_config(Plan.model_validate({"optimizer": {"kind": "fused_adam"}}))
    assert "torch_adam" not in fused["optimizer"]["params"]
    sgd = deepspeed_config(Plan.model_validate({"optimizer": {"kind": "sgd"}}))
    assert sgd["optimizer"]["type"] == "SGD" and sgd["zero_allow_untested_optimizer"] is True
    assert "deepspeed --num_gpus=8" in launch_command(Plan.model_validate({"hardware": {"num_gpus": 8}}), "train.py")
    torchrun = launch_command(Plan.model_validate({"engine": {"kind": "pytorch", "zero_stage": 0}}), "t.py")
    assert "torchrun" in torchrun and "NCCL_NVLS_ENABLE=0" in torchrun


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_parses_the_config(stage):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    offload = {"offload_optimizer": "cpu", "offload_params": "cpu"} if stage == 3 else {}
    plan = Plan.model_validate({"engine": {"kind": "deepspeed", "zero_stage": stage, **offload}})
    parsed = DeepSpeedConfig(deepspeed_config(plan))
    assert parsed.zero_optimization_stage == stage and parsed.bfloat16_config.enabled
    assert parsed.optimizer_name == "adamw" and parsed.gradient_clipping == 1.0
    assert parsed.train_batch_size == plan.inputs.micro_batch  # world size 1 without torch.distributed


# --------------------------------------------------------------------------- imports, CLI, launcher


def test_records_and_cli_import_no_torch():
    code = ("import sys, memplan.cli.probe, memplan.probe, memplan.probe.records, memplan.integrations.deepspeed\n"
            "print(' '.join(m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _cli():
    import typer

    from memplan.cli.probe import probe_command

    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("probe")(probe_command)
    return app


def test_cli_runs_on_cpu_and_rejects_bad_input(tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "p.jsonl"
    args = ["probe", "--model", str(TINY), "--gpus", "1", "--engine", "pytorch", "--zero", "0", "--lora-rank", "8",
            "--text-len", "64", "--tiles", "1", "--res", "64", "--objects", "2", "--device", "cpu", "--steps", "1",
            "--out", str(out)]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "optimizer_step" in result.output and str(out) in result.output.replace("\n", "")
    assert records.read_records(out)[0]["status"] == "ok"
    bad = CliRunner().invoke(_cli(), [*args[:-2], "--text-len", "4", "--out", str(out)])
    assert bad.exit_code == 2 and "inputs.text_tokens=4" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(_cli(), [*args, "--steps", "0"])
    assert bad.exit_code == 2 and "--steps=0" in bad.output


def test_launcher_records_a_dead_rank(tmp_path, monkeypatch):
    """Two CPU ranks under torchrun; rank 1 dies at once: one 'error' record naming it, no hang."""
    from memplan.probe.launch import FAULT_ENV, launch_probe

    monkeypatch.setenv(FAULT_ENV, "1:7")
    plan = cpu_plan(hardware={"num_gpus": 2})
    out = tmp_path / "p.jsonl"
    record = launch_probe(tiny(), plan, gpus=2, out=out, device="cpu", timeout_s=120, command="pytest")
    assert record["status"] == "error" and "rank 1 exited with code 7" in record["error"]
    assert len(records.read_records(out)) == 1


def test_launcher_timeout_kills_the_group(tmp_path, monkeypatch):
    import memplan.probe.launch as launch

    monkeypatch.setenv(launch.FAULT_ENV, "0:hang")
    monkeypatch.setattr(launch, "START_GRACE_S", 1)
    monkeypatch.setattr(launch, "KILL_GRACE_S", 2)
    plan = cpu_plan(hardware={"num_gpus": 2})
    record = launch.launch_probe(tiny(), plan, gpus=2, out=tmp_path / "p.jsonl", device="cpu", timeout_s=2,
                                 command="pytest")
    assert record["status"] == "timeout"


@pytest.mark.parametrize("name", ["sa2va-qwen2.5-vl-3b", "sa2va-qwen3-vl-4b"])
def test_qwen_vision_towers_train(name):
    """The Qwen-VL towers (transformers' own classes, merger = projector) at tiny widths: one step."""
    from memplan.spec.loading import profile_names
    from memplan.probe.run import measure_rank

    if name not in profile_names():
        pytest.skip(f"{name} is not a shipped profile")
    full = load_profile(name)
    vision = full.vision.model_copy(update={
        "num_layers": 2, "hidden_size": 64, "num_heads": 4, "intermediate_size": 96,
        "image_size": 4 * full.vision.patch_size,
        "full_attention_layers": (1,) if full.vision.full_attention_layers else (),
        "num_position_embeddings": 64 if full.vision.num_position_embeddings else 0})
    projector = full.projector.model_copy(update={
        "input_size": 64, "hidden_size": 256, "output_size": 64,
        "deepstack_mergers": min(full.projector.deepstack_mergers, 1)})
    profile = tiny().model_copy(update={"vision": vision, "projector": projector})
    result = measure_rank(profile, cpu_plan(), steps=1, device="cpu")
    assert result.status == "ok", result.error_trace
    assert not [note for note in result.notes if "did not build" in note]
    assert result.parameters["trainable"]["projector"] == projector.param_count()
    assert result.parameters["frozen"]["vision"] == vision.param_count()


@pytest.mark.parametrize("upcast", [False, True])
def test_checkpointing_is_on_with_and_without_the_upcast(upcast):
    """peft's prepare_model_for_kbit_training leaves checkpointing off on an unquantized model; the
    probe must turn it on itself, as Sa2VA does (regression: the first H100 records ran without it)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from memplan.probe.apply import apply_plan
    from memplan.probe.build import build_model

    plan = cpu_plan(precision={"compute": "fp32", "llm_fp32_upcast": upcast})
    model = apply_plan(build_model(tiny(), plan), plan)
    layers = [m for m in model.llm.modules() if isinstance(m, GradientCheckpointingLayer) and "decoder" in type(m).__name__.lower()]
    assert layers and all(layer.gradient_checkpointing for layer in layers)


def test_meter_reads_the_allocator_pressure_fields_on_cpu():
    """Every phase reading carries max_inactive_split_bytes and alloc_retries (memplan.probe.meter); the CPU
    stand-in has no cache, so both are 0 there, and a GPU record's capped runs can be read row by row."""
    torch = pytest.importorskip("torch")
    from memplan.probe.meter import Meter
    from memplan.probe.tracker import StorageTracker

    meter = Meter(torch.device("cpu"), StorageTracker())
    meter.reset()
    reading = meter.read()
    assert {"max_inactive_split_bytes", "alloc_retries"} <= set(reading)
    assert reading["max_inactive_split_bytes"] == 0 and reading["alloc_retries"] == 0
    assert all(isinstance(value, int) for value in reading.values())
