"""The training stack's behaviours in the estimate: each knob moves the estimate by its mechanism.

Each test states the expected bytes from the formula (memplan/estimate/stack.py, attention.py,
loss.py) and compares, so a change of mechanism fails here before it reaches a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.estimate import activations, attention, estimate, loss, stack
from memplan.estimate.context import build_context
from memplan.planning.sinks import _hooks_change, find_sinks
from memplan.spec.loading import load_plan, load_profile
from memplan.spec.plan import Plan
from memplan.spec.vocabulary import Component


def plan_with(**updates) -> Plan:
    """The official recipe on one GPU, plain PyTorch, bf16 weights, with dotted updates."""
    document = load_plan("sa2va-official").model_dump()
    document["engine"] = {"kind": "pytorch", "zero_stage": 0}
    document["hardware"]["num_gpus"] = 1
    document["precision"]["llm_fp32_upcast"] = False  # a bf16 model, as users load it
    for dotted, value in updates.items():
        node = document
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return Plan.model_validate(document)


INTERNVL = load_profile("internvl2.5-1b")
QWEN = load_profile("qwen2.5-0.5b")


def test_sa2va_stack_is_the_default_and_keeps_the_harness_rules():
    behaviour = stack.resolve(plan_with())
    assert behaviour.kind == "sa2va" and behaviour.adapters_fp32 is None and behaviour.autocast is None
    assert behaviour.input_grad_hooks == "llm" and not behaviour.keeps_outputs and not behaviour.fused_optimizer


@pytest.mark.parametrize(("version", "hooks"), [("4.46.3", "llm"), ("5.0.0", "all_towers"), ("5.17.0", "all_towers")])
def test_hooks_follow_the_transformers_version(version, hooks):
    plan = plan_with(**{"stack.kind": "hf-trainer", "stack.transformers_version": version})
    assert stack.resolve(plan).input_grad_hooks == hooks


def test_no_hooks_without_checkpointing_and_the_knob_wins():
    assert stack.resolve(plan_with(**{"stack.kind": "hf-trainer", "components.llm.checkpointing": False})).input_grad_hooks == "none"
    assert stack.resolve(plan_with(**{"stack.kind": "hf-trainer", "stack.input_grad_hooks": "llm"})).input_grad_hooks == "llm"


def test_missing_transformers_is_said(monkeypatch):
    monkeypatch.setattr(stack, "installed_version", lambda package: None)
    behaviour = stack.resolve(plan_with(**{"stack.kind": "custom-loop"}))
    assert behaviour.input_grad_hooks == "all_towers"
    assert any("not installed" in note for note in behaviour.assumptions)


def test_hooks_make_the_frozen_vision_tower_keep_its_graph():
    """13 tiles of InternViT-300M, the LLM alone checkpointed (checkpoint_scope components):
    L x (12h + 2F + 4 heads) x 13 x 1025 tokens, about 6.6 GB."""
    hooked = build_context(INTERNVL, plan_with(**{"stack.kind": "hf-trainer", "stack.transformers_version": "5.17",
                                                  "stack.checkpoint_scope": "components"}))
    v = INTERNVL.vision
    expected = v.num_layers * (12 * v.hidden_size + 2 * v.intermediate_size + 4 * v.num_heads) * 13 * v.tokens_per_tile
    assert activations.vision_activation_bytes(hooked) == expected
    assert 6.0e9 < expected < 7.0e9
    unhooked = build_context(INTERNVL, plan_with(**{"stack.kind": "hf-trainer", "stack.input_grad_hooks": "llm"}))
    assert activations.vision_activation_bytes(unhooked) == 0


def test_whole_model_checkpointing_checkpoints_the_hooked_vision_tower():
    """Trainer's gradient_checkpointing=True (checkpoint_scope model, the default of the transformers
    stacks) checkpoints InternVL's vision layers too: each keeps its bf16 input, 2h per token."""
    ctx = build_context(INTERNVL, plan_with(**{"stack.kind": "hf-trainer", "stack.transformers_version": "5.17"}))
    v = INTERNVL.vision
    assert ctx.stack.vision_checkpointing
    assert activations.vision_activation_bytes(ctx) == v.num_layers * 2 * v.hidden_size * 13 * v.tokens_per_tile
    sa2va = build_context(INTERNVL, plan_with())
    assert not sa2va.stack.vision_checkpointing  # the harness checkpoints per component


def test_zero2_bucket_meets_the_loss_spike_only_with_a_trained_output_layer():
    from memplan.estimate import buffers

    lora = build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer", "engine.kind": "deepspeed", "engine.zero_stage": 2,
                                            "components.llm.modules_to_save": []}))
    head = build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer", "engine.kind": "deepspeed", "engine.zero_stage": 2}))
    assert not buffers.output_grad_first(lora) and buffers.output_grad_first(head)


def test_zero12_step_flattens_16bit_gradients_and_init_makes_an_fp32_zero_grad():
    """stage_1_and_2.py: step() flattens the 16-bit gradient partition before the fp32 cast, and
    initialize_optimizer_states() makes an fp32 zero gradient of the partition beside the masters;
    neither on the GPU with the optimizer offloaded, no flat copy when the gradients are fp32."""
    from memplan.estimate import buffers
    from memplan.estimate.phases import Shared, init_phase

    def ctx(gpus=1, **updates):
        return build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer", "engine.kind": "deepspeed",
                                                "engine.zero_stage": 2, "components.llm.train": "full",
                                                "components.llm.lora": None, "components.llm.modules_to_save": [],
                                                "hardware.num_gpus": gpus, **updates}))

    one, two = ctx(), ctx(2)
    params = one.total_trainable
    assert buffers.zero12_step_flat_grad_bytes(one) == 2 * params
    assert buffers.zero12_step_flat_grad_bytes(two) == -(-2 * params // 2)
    assert buffers.step_transient_bytes(one) == 6 * params
    assert buffers.zero12_init_states_grad_bytes(one) == 4 * params
    assert buffers.zero12_init_states_grad_bytes(two) == -(-4 * params // 2)
    offload = ctx(**{"engine.offload_optimizer": "cpu"})
    assert buffers.zero12_step_flat_grad_bytes(offload) == buffers.zero12_init_states_grad_bytes(offload) == 0
    fp32 = ctx(**{"precision.compute": "fp32"})
    assert buffers.zero12_step_flat_grad_bytes(fp32) == 0
    zero3 = ctx(**{"engine.zero_stage": 3})
    assert buffers.zero12_step_flat_grad_bytes(zero3) == buffers.zero12_init_states_grad_bytes(zero3) == 0
    # one rank: flat 16-bit parameters + fp32 masters + fp32 zero grad (2 + 4 + 4 bytes) beats the flatten (2 + 2)
    init = init_phase(one, Shared(one))
    assert init.moment.label.endswith("initialize_optimizer_states")
    assert init.total == 10 * params
    # four ranks: the flatten (2 + 2) beats 2 + 4/4 + 4/4
    four = ctx(4)
    assert init_phase(four, Shared(four)).moment.label.endswith("flatten")


def test_a_plan_with_hooks_over_13_tiles_names_the_sink_and_its_saving():
    plan = plan_with(**{"stack.kind": "hf-trainer", "stack.transformers_version": "5.17",
                        "stack.checkpoint_scope": "components"})
    sinks = {s.name: s for s in find_sinks(INTERNVL, plan)}
    sink = sinks["input-grad hooks on the vision tower"]
    fixed = plan_with(**{"stack.kind": "hf-trainer", "stack.input_grad_hooks": "llm", "stack.checkpoint_scope": "components"})
    assert sink.saved_bytes == estimate(INTERNVL, plan).peak_allocated_bytes - estimate(INTERNVL, fixed).peak_allocated_bytes
    assert sink.saved_bytes > 5 * 2**30
    assert "register_forward_hook" in sink.change and sink.knob == "stack.input_grad_hooks=llm"
    assert "on_train_begin" in sink.change  # Trainer re-hooks every tower at train(): the fix goes in a callback
    loop = build_context(INTERNVL, plan_with(**{"stack.kind": "custom-loop", "stack.transformers_version": "5.17"}))
    assert "on_train_begin" not in _hooks_change(loop) and "disable_input_require_grads" in _hooks_change(loop)


def test_peft_stacks_hold_adapters_in_fp32_and_copies_in_the_base_dtype():
    ctx = build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer"}))
    llm = ctx.parts[Component.LLM]
    assert (llm.trainable_bytes, llm.copies_bytes, llm.weight_bytes) == (4, 2, 2)
    assert llm.copies == 2 * QWEN.llm.embedding_params  # embed_tokens and lm_head copies (tied: two copies)
    adapters = llm.trainable - llm.copies
    assert llm.trainable_held_bytes == 4 * adapters + 2 * llm.copies
    compute = build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer", "stack.adapter_dtype": "compute"}))
    assert compute.parts[Component.LLM].trainable_held_bytes == 2 * llm.trainable


def test_adam_moments_follow_each_parameters_dtype_outside_deepspeed():
    from memplan.estimate import optimizer

    ctx = build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer"}))
    llm = ctx.parts[Component.LLM]
    assert optimizer.optimizer_state_bytes(ctx, Component.LLM) == 2 * llm.trainable_held_bytes
    assert optimizer.master_weight_bytes(ctx, Component.LLM) == 0


def test_tied_embeddings_trained_in_place_are_one_tensor():
    assert QWEN.llm.tie_word_embeddings
    ctx = build_context(QWEN, plan_with(**{"stack.kind": "custom-loop", "stack.embeddings_training": "in_place"}))
    llm = ctx.parts[Component.LLM]
    assert llm.copies == QWEN.llm.embedding_params
    assert llm.frozen == llm.total - QWEN.llm.embedding_params


def test_eager_attention_keeps_six_bytes_per_head_per_pair_per_layer():
    plan = plan_with(**{"stack.kind": "hf-trainer", "attention": "eager", "components.llm.checkpointing": False,
                        "inputs.tiles": 0, "inputs.text_tokens": 2048})
    sdpa = plan_with(**{"stack.kind": "hf-trainer", "components.llm.checkpointing": False,
                        "inputs.tiles": 0, "inputs.text_tokens": 2048})
    eager_ctx, sdpa_ctx = build_context(QWEN, plan), build_context(QWEN, sdpa)
    llm = QWEN.llm
    pairs = llm.num_heads * 2048**2
    per_token = attention.llm_eager_delta_per_token(eager_ctx)
    assert per_token == 4 * (llm.q_dim - llm.kv_dim) - 2 * llm.q_dim - 4 * llm.num_heads
    expected = llm.num_layers * (6 * pairs + per_token * 2048)
    assert activations.llm_activation_bytes(eager_ctx) - activations.llm_activation_bytes(sdpa_ctx) == expected


def test_eager_pairs_grow_with_the_square_of_the_sequence():
    short = build_context(QWEN, plan_with(**{"attention": "eager", "inputs.text_tokens": 1024}))
    long = build_context(QWEN, plan_with(**{"attention": "eager", "inputs.text_tokens": 2048}))
    assert attention.llm_saved_pairs_bytes(long) == 4 * attention.llm_saved_pairs_bytes(short)


def test_kept_outputs_hold_the_bf16_logits_through_backward():
    plan = plan_with(**{"stack.kind": "custom-loop", "inputs.output_hidden_states": False})
    ctx = build_context(QWEN, plan)
    assert loss.kept_logits_bytes(ctx) == 2 * 4096 * QWEN.llm.vocab_size
    dropped = build_context(QWEN, plan_with(**{"stack.kind": "custom-loop", "stack.keeps_outputs": False,
                                               "inputs.output_hidden_states": False}))
    assert activations.llm_kept_output_bytes(dropped) == 0


def test_chunked_loss_never_materialises_the_logits():
    ctx = build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer", "stack.loss": "chunked"}))
    full = build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer"}))
    assert loss.largest_block_bytes(ctx) < loss.largest_block_bytes(full) / 4
    assert loss.logits_saved_bytes(ctx) == 2 * 4096 * QWEN.llm.hidden_size
    assert loss.logits_backward_bytes(ctx) == 0


def test_trainer_uses_the_fused_optimizer_without_temporaries():
    from memplan.estimate import buffers

    trainer = build_context(QWEN, plan_with(**{"stack.kind": "hf-trainer"}))
    loop = build_context(QWEN, plan_with(**{"stack.kind": "custom-loop"}))
    assert buffers.step_transient_bytes(trainer) == 0
    assert buffers.step_transient_bytes(loop) == sum(p.trainable_held_bytes for p in loop.parts.values())


def test_cli_stack_flags_move_the_estimate_and_say_what_was_assumed():
    runner = CliRunner()
    base = ["estimate", "-m", "internvl2.5-1b", "--engine", "pytorch", "--gpus", "1", "--vram", "80", "--format", "json"]
    sa2va = json.loads(runner.invoke(app, base).stdout)
    trainer = json.loads(runner.invoke(app, [*base, "--stack", "hf-trainer", "--attention", "eager"]).stdout)
    assert trainer["peak_allocated_bytes"] > sa2va["peak_allocated_bytes"]
    assert trainer["stack"]["kind"] == "hf-trainer" and trainer["stack"]["attention"] == "eager"
    assert "input-grad hooks on the vision tower" in {s["name"] for s in trainer["sinks"]}
    eager = json.loads(runner.invoke(app, [*base, "--stack", "hf-trainer", "--attention", "eager", "--no-ckpt"]).stdout)
    assert "eager attention" in {s["name"] for s in eager["sinks"]}
    bf16 = json.loads(runner.invoke(app, [*base, "--stack", "hf-trainer", "--adapter-dtype", "compute"]).stdout)
    assert bf16["stack"]["adapters"] == "compute"


@pytest.mark.parametrize(("flag", "value"), [("--stack", "deepspeed"), ("--attention", "flash3"), ("--adapter-dtype", "fp8")])
def test_bad_stack_flags_are_one_line_exit_2(flag, value):
    result = CliRunner().invoke(app, ["estimate", flag, value])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and value in result.output


def test_kept_outputs_live_until_the_next_forward_returns():
    """`out = model(...)` rebinds only when the next forward returns: the kept logits are in the
    optimizer step and in the next forward as well as in backward (H200 custom-loop records)."""
    from memplan.estimate.peak import estimate as run

    keep = plan_with(**{"stack.kind": "custom-loop", "inputs.output_hidden_states": False})
    drop = plan_with(**{"stack.kind": "custom-loop", "stack.keeps_outputs": False, "inputs.output_hidden_states": False})
    kept = loss.kept_logits_bytes(build_context(QWEN, keep))
    with_kept = {p.phase.value: p.total for p in run(QWEN, keep).phases}
    without = {p.phase.value: p.total for p in run(QWEN, drop).phases}
    assert with_kept["optimizer_step"] - without["optimizer_step"] == kept
    assert with_kept["forward"] - without["forward"] == kept


def test_the_stack_line_says_deepspeed_casts_the_adapters():
    """Under DeepSpeed the adapters are held in the compute dtype (the engine casts the module), whatever
    peft asked: the summary says so rather than peft's fp32 (memplan.estimate.context._dtype_bytes)."""
    from memplan.planning.sinks import stack_summary
    from memplan.spec.flags import plan_from_flags
    from memplan.spec.loading import load_profile

    recipe = Path(__file__).resolve().parents[1] / "memplan" / "plans" / "hf-trainer-lora.yaml"
    profile = load_profile("qwen2.5-1.5b")
    plain = plan_from_flags(recipe, gpus=1, engine="pytorch")
    assert stack_summary(profile, plain)["adapters"] == "fp32"
    deepspeed = plan_from_flags(recipe, gpus=1, zero=2)
    assert stack_summary(profile, deepspeed)["adapters"].startswith("compute (DeepSpeed")
