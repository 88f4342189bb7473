"""The user-stack probes on the CPU: a tiny text model and a tiny InternVL through the real
transformers.Trainer, through accelerate's documented loop and through a hand-written loop
(memplan/probe/stacks), a few seconds each.

GPU tier: tests/test_probe_stacks_gpu.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memplan.spec.loading import InputError, load_profile
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

TINY = Path(__file__).parent / "fixtures" / "profiles" / "tiny-sa2va.yaml"
RANK = 4
INPUTS = {"micro_batch": 1, "text_tokens": 40, "tiles": 2, "frames": 0, "objects": 0}
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def tiny_internvl() -> Profile:
    sa2va = load_profile(str(TINY))
    return Profile(name="tiny-internvl", source="test", vision=sa2va.vision, projector=sa2va.projector, llm=sa2va.llm)


def tiny_text() -> Profile:
    return Profile(name="tiny-text", source="test", llm=load_profile(str(TINY)).llm)


def stack_plan(kind: str, *, stack: dict | None = None, llm: dict | None = None, **sections) -> Plan:
    """bf16 plain-PyTorch LoRA plan on tiny inputs for ``kind``; sections override."""
    document = {
        "engine": {"kind": "pytorch", "zero_stage": 0}, "precision": {"compute": "bf16", "master_weights": False},
        "stack": {"kind": kind, **(stack or {})}, "inputs": dict(INPUTS),
        "components": {"llm": {"train": "lora", "checkpointing": True, "lora": {"rank": RANK, "alpha": 8},
                               "modules_to_save": ["embed_tokens", "lm_head"], **(llm or {})}},
        **sections,
    }
    return Plan.model_validate(document)


@pytest.fixture(scope="module")
def trainer_record():
    from memplan.probe.run import run_probe

    return run_probe(tiny_internvl(), stack_plan("hf-trainer"), steps=2, device="cpu", command="pytest")


@pytest.fixture(scope="module")
def loop_record():
    from memplan.probe.run import run_probe

    plan = stack_plan("custom-loop", inputs={**INPUTS, "tiles": 0})
    return run_probe(tiny_text(), plan, steps=2, device="cpu", command="pytest")


@pytest.fixture(scope="module")
def accelerate_text_record():
    pytest.importorskip("accelerate")
    from memplan.probe.run import run_probe

    plan = stack_plan("accelerate", inputs={**INPUTS, "tiles": 0})
    return run_probe(tiny_text(), plan, steps=2, device="cpu", command="pytest")


@pytest.fixture(scope="module")
def accelerate_internvl_record():
    pytest.importorskip("accelerate")
    from memplan.probe.run import run_probe

    return run_probe(tiny_internvl(), stack_plan("accelerate"), steps=2, device="cpu", command="pytest")


def check_record(record: dict, steps: int = 2) -> dict:
    from memplan.probe import records

    assert record["schema"] == records.SCHEMA
    assert record["status"] == "ok", (record["error"], record["ranks"][0].get("error_trace"))
    (rank,) = record["ranks"]
    assert set(rank["phases"]) == {"init", "forward", "backward", "optimizer_step"}
    assert len(rank["step_phases"]) == steps and len(rank["step_times_s"]) == steps
    assert [round(sum(parts.values()), 6) for parts in rank["phase_times_s"]] == pytest.approx(rank["step_times_s"], abs=1e-5)
    phases = rank["phases"]
    assert phases["backward"]["max_allocated_bytes"] > phases["init"]["max_allocated_bytes"] > 0
    assert rank["categories"]["optimizer_state"] > 0 and rank["categories"]["gradients"] > 0
    env = record["environment"]
    assert all(env[library] for library in ("torch", "transformers", "peft", "accelerate"))
    assert record["plan"]["stack"]["kind"] == rank["stack"]["kind"]
    return rank


def test_trainer_really_ran(trainer_record):
    rank = check_record(trainer_record)
    stack = rank["stack"]
    assert stack["model_class"] == "InternVLForConditionalGeneration" and stack["peft"]
    state = stack["trainer_state"]
    assert state["global_step"] == state["max_steps"] == 2  # Trainer's own count of optimizer steps
    assert state["optim"] == "adamw_torch_fused" and state["bf16"] and state["gradient_checkpointing"]


def test_trainer_adapters_fp32_copies_bf16(trainer_record):
    """peft's autocast_adapter_dtype=True: LoRA fp32 on a bf16 model; modules_to_save copies and the
    in-place projector stay bf16 (tied embed/lm_head: two copies)."""
    profile = tiny_internvl()
    llm = profile.llm
    stack = trainer_record["ranks"][0]["stack"]
    assert stack["trainable_dtypes"]["float32"] == llm.lora_params(RANK, None)
    assert stack["trainable_dtypes"]["bfloat16"] == 2 * llm.embedding_params + profile.component_params()["projector"]


@pytest.mark.skipif(not TRANSFORMERS_5, reason="transformers 4.x hooks the top model's embeddings only")
def test_checkpointing_hooks_the_vision_embeddings(trainer_record):
    hooks = trainer_record["ranks"][0]["stack"]["input_grad_hooks"]
    assert any(name.endswith("vision_tower.embeddings.patch_embeddings") for name in hooks)
    assert any(name.endswith("language_model.embed_tokens") for name in hooks)


def test_custom_loop_record(loop_record):
    rank = check_record(loop_record)
    stack = rank["stack"]
    assert stack["model_class"] == "Qwen2ForCausalLM" and stack["optimizer"] == "AdamW"
    assert stack["keeps_outputs"] and not stack["autocast"] and not stack["fused_optimizer"]
    assert "trainer_state" not in stack


def check_accelerate(record: dict, profile: Profile, model_class: str) -> dict:
    """accelerate's loop ran as the estimate resolves it: bf16 autocast, outputs kept (fp32, by
    convert_outputs_to_fp32), foreach AdamW, fp32 LoRA adapters beside bf16 copies."""
    import accelerate

    from memplan.estimate.stack import resolve

    rank = check_record(record)
    stack = rank["stack"]
    assert record["environment"]["accelerate"] == accelerate.__version__
    assert stack["model_class"] == model_class and stack["peft"] and stack["optimizer"] == "AdamW"
    behaviour = resolve(Plan.model_validate(record["plan"]))
    assert (stack["autocast"], stack["keeps_outputs"], stack["fused_optimizer"]) == (
        behaviour.autocast, behaviour.keeps_outputs, behaviour.fused_optimizer) == (True, True, False)
    assert behaviour.adapters_fp32 and behaviour.outputs_fp32
    assert stack["accelerate"] == {"mixed_precision": "bf16", "native_amp": True, "distributed_type": "NO",
                                   "outputs_logits_dtype": "float32", "gradient_accumulation_steps": 1}
    llm = profile.llm
    assert stack["trainable_dtypes"]["float32"] == llm.lora_params(RANK, None)  # prepare casts nothing
    extra = profile.component_params().get("projector", 0) if profile.projector is not None else 0
    assert stack["trainable_dtypes"]["bfloat16"] == 2 * llm.embedding_params + extra
    assert "trainer_state" not in stack
    return stack


def test_accelerate_text_record(accelerate_text_record):
    check_accelerate(accelerate_text_record, tiny_text(), "Qwen2ForCausalLM")


def test_accelerate_internvl_record(accelerate_internvl_record):
    stack = check_accelerate(accelerate_internvl_record, tiny_internvl(), "InternVLForConditionalGeneration")
    if TRANSFORMERS_5:  # the same adapt path: checkpointing hooks the vision embeddings
        assert any(name.endswith("vision_tower.embeddings.patch_embeddings") for name in stack["input_grad_hooks"])


def test_accelerate_keeps_fp32_logits():
    """accelerate's prepare converts the outputs to fp32: keeping them costs 4 bytes x tokens x V
    through backward (a custom loop keeps the bf16 logits, 2), as memplan.estimate.loss counts it;
    stack.keeps_outputs false (``del outputs``) keeps nothing."""
    pytest.importorskip("accelerate")
    from memplan.estimate.context import build_context
    from memplan.estimate.loss import kept_logits_bytes
    from memplan.probe.run import run_probe

    profile, tokens = tiny_text(), 200
    backward = {}
    for keeps in (True, False):
        plan = stack_plan("accelerate", stack={"keeps_outputs": keeps}, inputs={**INPUTS, "tiles": 0, "text_tokens": tokens})
        record = run_probe(profile, plan, steps=1, device="cpu", command="pytest")
        rank = check_record(record, steps=1)
        assert rank["stack"]["keeps_outputs"] is keeps
        backward[keeps] = rank["phases"]["backward"]["max_allocated_bytes"]
    kept = 4 * tokens * profile.llm.vocab_size
    assert backward[True] - backward[False] == kept
    assert kept_logits_bytes(build_context(profile, plan.model_copy(update={"stack": plan.stack.model_copy(
        update={"keeps_outputs": True})}))) == kept


def test_accelerate_without_autocast_runs_no_mixed_precision():
    from memplan.estimate.stack import resolve
    from memplan.probe.stacks.accelerate_loop import mixed_precision

    plan = stack_plan("accelerate", stack={"autocast": False})
    assert mixed_precision(plan) == "no" and not resolve(plan).outputs_fp32
    assert mixed_precision(stack_plan("accelerate")) == "bf16"
    assert not resolve(stack_plan("custom-loop")).outputs_fp32 and not resolve(stack_plan("hf-trainer")).outputs_fp32


def test_record_reads_back(tmp_path, loop_record):
    from memplan.probe import records

    path = records.append_record(tmp_path / "stacks.jsonl", loop_record)
    (back,) = records.read_records(path)
    assert back["ranks"][0]["stack"] == loop_record["ranks"][0]["stack"]


# --------------------------------------------------------------------------- building (no training)


def adapted(profile: Profile, plan: Plan):
    from memplan.probe.stacks.models import adapt, build_hf_model

    return adapt(build_hf_model(profile, plan))


def trainable_dtypes(model) -> dict:
    out: dict = {}
    for param in model.parameters():
        if param.requires_grad:
            out[param.dtype] = out.get(param.dtype, 0) + param.numel()
    return out


def test_adapter_dtype_compute_and_in_place_embeddings():
    """adapter_dtype compute: autocast_adapter_dtype=False, bf16 adapters; in_place: the tied
    embedding trains once, on the base weights."""
    llm = tiny_text().llm
    plan = stack_plan("hf-trainer", stack={"adapter_dtype": "compute", "embeddings_training": "in_place"},
                      inputs={**INPUTS, "tiles": 0})
    dtypes = trainable_dtypes(adapted(tiny_text(), plan))
    assert dtypes == {torch.bfloat16: llm.lora_params(RANK, None) + llm.embedding_params}


def test_weights_fp32_and_full_training():
    plan = stack_plan("custom-loop", llm={"train": "full", "modules_to_save": []},
                      precision={"compute": "bf16", "weights_fp32": True}, inputs={**INPUTS, "tiles": 0})
    model = adapted(tiny_text(), plan)
    assert trainable_dtypes(model) == {torch.float32: tiny_text().llm.param_count()}


def test_input_grad_hooks_knob_and_no_checkpointing():
    from memplan.probe.stacks.models import input_grad_hooks

    llm_only = adapted(tiny_internvl(), stack_plan("hf-trainer", stack={"input_grad_hooks": "llm"}))
    assert [name.rsplit(".", 2)[-2:] for name in input_grad_hooks(llm_only)] == [["language_model", "embed_tokens"]]
    plain = adapted(tiny_internvl(), stack_plan("hf-trainer", llm={"checkpointing": False}))
    assert input_grad_hooks(plain) == []


def test_internvl_sample_has_the_image_tokens():
    from memplan.probe.stacks.models import build_hf_model, collate, make_sample

    stack_model = build_hf_model(tiny_internvl(), stack_plan("custom-loop"))
    config = stack_model.model.config
    batch = collate([make_sample(stack_model, seed=0), make_sample(stack_model, seed=1)])
    per_tile = config.image_seq_length  # (56 / 14)^2 / 4 = 4 tokens per tile for the tiny tower
    assert per_tile == 4
    assert batch["pixel_values"].shape == (2 * INPUTS["tiles"], 3, 56, 56)
    assert ((batch["input_ids"] == config.image_token_id).sum(dim=1) == INPUTS["tiles"] * per_tile).all()
    assert (batch["labels"][:, : INPUTS["tiles"] * per_tile] == -100).all()


# --------------------------------------------------------------------------- refusals and configs


@pytest.mark.parametrize("change, message", [
    ({"engine": {"kind": "deepspeed", "zero_stage": 2}}, "engine.kind=deepspeed"),
    ({"stack": {"kind": "accelerate"}, "engine": {"kind": "deepspeed", "zero_stage": 2}},
     "engine.kind=deepspeed: stack.kind=accelerate"),
    ({"stack": {"kind": "accelerate"}, "hardware": {"num_gpus": 2}}, "hardware.num_gpus=2: stack.kind=accelerate"),
    ({"hardware": {"num_gpus": 2}}, "hardware.num_gpus=2: stack.kind=custom-loop"),
    ({"stack": {"kind": "custom-loop", "loss": "chunked"}}, "stack.loss=chunked"),
    ({"stack": {"kind": "hf-trainer", "keeps_outputs": True}}, "stack.keeps_outputs=true"),
])
def test_refused_plans(change, message):
    from memplan.probe.stacks import check_stack

    document = {"stack": {"kind": "custom-loop"}, "engine": {"kind": "pytorch", "zero_stage": 0}, **change}
    with pytest.raises(InputError, match=message):
        check_stack(tiny_text(), Plan.model_validate(document))


def test_sa2va_profile_refused_naming_stack_and_model():
    from memplan.probe.stacks import check_stack

    with pytest.raises(InputError, match=r"stack.kind=hf-trainer: model tiny-sa2va"):
        check_stack(load_profile(str(TINY)), Plan.model_validate({"stack": {"kind": "hf-trainer"}}))


def test_trainer_deepspeed_config():
    """Trainer builds its own torch optimizer (no optimizer block); offload then needs
    zero_force_ds_cpu_optimizer false; DeepSpeed's own optimizers keep their block."""
    from memplan.probe.stacks.hf_trainer import trainer_deepspeed_config

    zero2 = trainer_deepspeed_config(Plan.model_validate({"engine": {"kind": "deepspeed", "zero_stage": 2}}))
    assert "optimizer" not in zero2 and zero2["zero_optimization"]["stage"] == 2
    assert "zero_force_ds_cpu_optimizer" not in zero2
    offload = trainer_deepspeed_config(Plan.model_validate(
        {"engine": {"kind": "deepspeed", "zero_stage": 2, "offload_optimizer": "cpu"}}))
    assert offload["zero_force_ds_cpu_optimizer"] is False and "optimizer" not in offload
    cpu_adam = trainer_deepspeed_config(Plan.model_validate(
        {"engine": {"kind": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu"}, "optimizer": {"kind": "cpu_adam"}}))
    assert cpu_adam["optimizer"]["type"] == "AdamW"
    assert trainer_deepspeed_config(Plan.model_validate({"engine": {"kind": "pytorch", "zero_stage": 0}})) is None


@pytest.mark.skipif(not TRANSFORMERS_5, reason="transformers 4.x hooks the top model's embeddings only")
def test_trainer_keeps_llm_only_hooks_set_by_the_knob():
    """stack.input_grad_hooks: llm survives Trainer.train's own checkpointing enable (which re-hooks every
    tower): the probe sets the hooks in on_train_begin, the way docs/stacks.md tells Trainer users to."""
    from memplan.probe.run import run_probe

    plan = stack_plan("hf-trainer", stack={"input_grad_hooks": "llm"})
    record = run_probe(tiny_internvl(), plan, steps=1, device="cpu", command="pytest")
    hooks = check_record(record, steps=1)["stack"]["input_grad_hooks"]
    assert hooks and all(name.endswith("language_model.embed_tokens") for name in hooks)
