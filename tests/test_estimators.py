"""Each estimator against a hand-worked small case, and the ZeRO sharding rules."""

import pytest

from memplan.estimate.peak import estimate
from memplan.estimate import activations as act
from memplan.estimate import buffers, gradients, optimizer, weights
from memplan.estimate.context import build_context
from memplan.spec.vocabulary import Component

LLM = Component.LLM

# tiny_llm by hand: attention per layer q 64*64+64, k/v 2*(64*32+32), o 64*64 = 12,416;
# mlp 3*64*128 = 24,576; norms 2*64 per layer + 64; embeddings 1000*64 = 64,000 (tied).
TINY_PARAMS = 2 * 12_416 + 2 * 24_576 + (2 * 2 * 64 + 64) + 64_000


def full_plan(plan_factory, **engine):
    return plan_factory(
        engine={"kind": "deepspeed", "zero_stage": 0, **engine},
        components={"llm": {"train": "full"}},
        inputs={"micro_batch": 1, "text_tokens": 10, "tiles": 0, "objects": 0},
    )


def test_param_count_by_hand(tiny_llm):
    assert tiny_llm.param_count() == TINY_PARAMS


def test_lora_params_by_hand(tiny_llm):
    # r * sum(d_in + d_out) over q(64,64) k(64,32) v(64,32) o(64,64) gate/up(64,128) down(128,64)
    per_layer = 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
    assert tiny_llm.llm.lora_params(8, None) == 2 * per_layer
    assert tiny_llm.llm.lora_params(8, ("q_proj",)) == 2 * 8 * 128


def test_frozen_weights_bf16(tiny_llm, plan_factory):
    plan = plan_factory(components={"llm": {"train": "frozen"}}, engine={"kind": "pytorch", "zero_stage": 0})
    ctx = build_context(tiny_llm, plan)
    assert weights.frozen_weight_bytes(ctx, LLM) == 2 * TINY_PARAMS
    assert weights.trainable_weight_bytes(ctx, LLM) == 0


def test_plain_pytorch_amp_keeps_fp32_trainable(tiny_llm, plan_factory):
    plan = plan_factory(components={"llm": {"train": "full"}}, engine={"kind": "pytorch", "zero_stage": 0})
    ctx = build_context(tiny_llm, plan)
    assert weights.trainable_weight_bytes(ctx, LLM) == 4 * TINY_PARAMS
    assert gradients.gradient_bytes(ctx, LLM) == 4 * TINY_PARAMS
    assert optimizer.optimizer_state_bytes(ctx, LLM) == 8 * TINY_PARAMS
    assert optimizer.master_weight_bytes(ctx, LLM) == 0


def test_upcast_under_plain_pytorch_but_not_deepspeed(tiny_llm, plan_factory):
    lora = {"llm": {"train": "lora", "lora": {"rank": 8}}}
    plain = build_context(tiny_llm, plan_factory(components=lora, engine={"kind": "pytorch", "zero_stage": 0},
                                                 precision={"llm_fp32_upcast": True}))
    ds = build_context(tiny_llm, plan_factory(components=lora, engine={"kind": "deepspeed", "zero_stage": 2},
                                              precision={"llm_fp32_upcast": True}))
    assert weights.frozen_weight_bytes(plain, LLM) == 4 * TINY_PARAMS
    assert weights.frozen_weight_bytes(ds, LLM) == 2 * TINY_PARAMS


@pytest.mark.parametrize("stage, gpus, weight_div, grad_div, optim_div", [
    (0, 4, 1, 1, 1), (1, 4, 1, 1, 4), (2, 4, 1, 4, 4), (3, 4, 4, 4, 4), (3, 1, 1, 1, 1),
])
def test_zero_sharding_rules(tiny_llm, plan_factory, stage, gpus, weight_div, grad_div, optim_div):
    """ZeRO paper (arXiv 1910.02054): stage 1 shards optimizer states (+ masters), stage 2 also
    gradients, stage 3 also parameters."""
    plan = plan_factory(engine={"kind": "deepspeed", "zero_stage": stage}, hardware={"num_gpus": gpus},
                        components={"llm": {"train": "full"}})
    ctx = build_context(tiny_llm, plan)
    ceil = lambda n, d: -(-n // d)  # noqa: E731
    assert weights.trainable_weight_bytes(ctx, LLM) == ceil(2 * TINY_PARAMS, weight_div)
    assert optimizer.optimizer_state_bytes(ctx, LLM) == ceil(8 * TINY_PARAMS, optim_div)
    assert optimizer.master_weight_bytes(ctx, LLM) == ceil(4 * TINY_PARAMS, optim_div)
    expected_grad = 4 * TINY_PARAMS if stage == 0 else ceil(2 * TINY_PARAMS, grad_div)  # BF16_Optimizer: fp32 accumulators
    assert gradients.gradient_bytes(ctx, LLM) == expected_grad


def test_offload_moves_states_to_host(tiny_llm, plan_factory):
    plan = plan_factory(engine={"kind": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu",
                                "offload_params": "cpu"}, hardware={"num_gpus": 2}, components={"llm": {"train": "full"}})
    ctx = build_context(tiny_llm, plan)
    assert optimizer.optimizer_state_bytes(ctx, LLM) == 0
    assert optimizer.master_weight_bytes(ctx, LLM) == 0
    assert weights.trainable_weight_bytes(ctx, LLM) == 0
    assert optimizer.host_optimizer_bytes(ctx) == 12 * TINY_PARAMS
    assert weights.host_weight_bytes(ctx) == 2 * TINY_PARAMS


def test_llm_activation_census_formula_by_hand(tiny_llm, plan_factory):
    """Frozen-with-graph: 8h + 4q + 4kv + 6F + 4*heads per token per layer (coefficients.py)."""
    plan = plan_factory(components={"llm": {"train": "frozen", "checkpointing": False}, "projector": {"train": "full"}},
                        inputs={"micro_batch": 2, "text_tokens": 10})
    ctx = build_context(tiny_llm, plan)
    assert act.llm_layer_bytes_per_token(ctx) == 8 * 64 + 4 * 64 + 4 * 32 + 6 * 128 + 4 * 4


def test_llm_lora_activation_by_hand(tiny_llm, plan_factory):
    """DeepSpeed bf16 (adapters bf16), dropout 0: frozen + 4h + 2F + 14r (coefficients.LORA_BF16);
    plain PyTorch keeps fp32 adapters: frozen + 20h + 4q + 4F + 28r (LORA_FP32)."""
    lora = {"llm": {"train": "lora", "checkpointing": False, "lora": {"rank": 8, "dropout": 0.0}}}
    inputs = {"micro_batch": 1, "text_tokens": 10}
    base = 8 * 64 + 4 * 64 + 4 * 32 + 6 * 128 + 4 * 4
    ds = build_context(tiny_llm, plan_factory(components=lora, inputs=inputs, engine={"kind": "deepspeed", "zero_stage": 2}))
    assert act.llm_layer_bytes_per_token(ds) == base + 4 * 64 + 2 * 128 + 14 * 8
    plain = build_context(tiny_llm, plan_factory(components=lora, inputs=inputs, engine={"kind": "pytorch", "zero_stage": 0}))
    assert act.llm_layer_bytes_per_token(plain) == base + 20 * 64 + 4 * 64 + 4 * 128 + 28 * 8
    tokens = 10
    expected = 2 * (act.llm_layer_bytes_per_token(ds) * tokens) + 4 * 64 * tokens
    assert act.llm_activation_bytes(ds) == expected


def test_checkpointing_keeps_layer_inputs(tiny_llm, plan_factory):
    plan = plan_factory(components={"llm": {"train": "lora", "checkpointing": True}},
                        inputs={"micro_batch": 3, "text_tokens": 100})
    ctx = build_context(tiny_llm, plan)
    tokens = 300
    assert act.llm_activation_bytes(ctx) == 2 * 2 * 64 * tokens + 4 * 64 * tokens
    assert act.logits_saved_bytes(ctx) == 4 * tokens * 1000


def test_ipg_buckets_follow_overlap(tiny_llm, plan_factory):
    base = dict(components={"llm": {"train": "full"}}, hardware={"num_gpus": 2})
    small = plan_factory(engine={"zero_stage": 2, "reduce_bucket_size": 1000, "overlap_comm": False}, **base)
    overlap = plan_factory(engine={"zero_stage": 2, "reduce_bucket_size": 1000, "overlap_comm": True}, **base)
    assert buffers.ipg_bucket_bytes(build_context(tiny_llm, small)) == 1000 * 2
    assert buffers.ipg_bucket_bytes(build_context(tiny_llm, overlap)) == 2 * 1000 * 2


def test_breakdown_sums_to_peak(tiny_llm, plan_factory):
    result = estimate(tiny_llm, full_plan(plan_factory))
    assert sum(t.bytes for t in result.breakdown()) + result.calibration.allocated_constant_bytes == result.peak_allocated_bytes
    assert all(isinstance(t.bytes, int) for t in result.breakdown())


def test_inference_has_no_training_states(tiny_llm, plan_factory):
    plan = plan_factory(mode="inference", engine={"kind": "pytorch", "zero_stage": 0})
    result = estimate(tiny_llm, plan)
    categories = {t.category.value for t in result.breakdown()}
    assert not categories & {"gradients", "optimizer_state", "master_weights", "activations"}


def _phase_terms(result, phase):
    moment = next(p for p in result.phases if p.phase.value == phase).moment
    return {(t.component.value, t.category.value) for t in moment.terms}


def test_zero2_buckets_live_in_backward_only(tiny_llm, plan_factory):
    """Measured on H100 (reports/probes): ZeRO-1/2 gradient buckets appear in the backward peak
    and not in the forward or step peaks; no gradient partition survives into the forward."""
    plan = plan_factory(engine={"kind": "deepspeed", "zero_stage": 2, "overlap_comm": True},
                        components={"llm": {"train": "full"}}, hardware={"num_gpus": 2})
    result = estimate(tiny_llm, plan)
    assert ("runtime", "deepspeed_buffers") in _phase_terms(result, "backward")
    assert ("runtime", "deepspeed_buffers") not in _phase_terms(result, "forward")
    assert ("runtime", "deepspeed_buffers") not in _phase_terms(result, "optimizer_step")
    assert ("llm", "gradients") not in _phase_terms(result, "forward")
    assert ("llm", "gradients") in _phase_terms(result, "optimizer_step")


def test_zero3_reduce_bucket_is_kept_from_initialize(tiny_llm, plan_factory):
    """ZeRO-3 allocates its reduce bucket at initialize (0.93 GiB measured for a tiny model)."""
    plan = plan_factory(engine={"kind": "deepspeed", "zero_stage": 3}, components={"llm": {"train": "full"}})
    result = estimate(tiny_llm, plan)
    for phase in ("init", "forward", "backward", "optimizer_step"):
        assert ("runtime", "deepspeed_buffers") in _phase_terms(result, phase), phase
    init = next(p for p in result.phases if p.phase.value == "init")
    assert init.total >= 500_000_000 * 2


def test_device_view_adds_nccl_under_deepspeed_even_on_one_gpu(tiny_llm, plan_factory):
    from memplan.estimate.overhead import Calibration

    calibration = Calibration(context_bytes=100, nccl_bytes=1000, reserved_ratio=0, reserved_constant_bytes=0)
    plain = estimate(tiny_llm, plan_factory(engine={"kind": "pytorch", "zero_stage": 0}), calibration)
    ds = estimate(tiny_llm, plan_factory(engine={"kind": "deepspeed", "zero_stage": 0}), calibration)
    assert plain.device_bytes - plain.peak_reserved_bytes == 100
    assert ds.device_bytes - ds.peak_reserved_bytes == 1100


def _zero3(plan_factory, *, stack="hf-trainer", gpus=1, offload="none"):
    return plan_factory(engine={"kind": "deepspeed", "zero_stage": 3, "offload_optimizer": offload},
                        components={"llm": {"train": "full"}}, hardware={"num_gpus": gpus}, stack={"kind": stack})


def test_zero3_on_one_rank_gathers_in_place(tiny_llm, plan_factory):
    """Partition world size 1: all_gather_coalesced hands back NoGatherCoalescedHandle, param.data is
    the partition (deepspeed/runtime/zero/partition_parameters.py); found on h200-stacks-b (in-sample).
    The condition is the world size, whatever the stack (docs/stacks.md, 9)."""
    from memplan.estimate import buffers
    from memplan.estimate.context import build_context

    one = build_context(tiny_llm, _zero3(plan_factory))
    assert buffers.zero3_gathers_in_place(one) and buffers.zero3_gathered_bytes(one) == 0
    two = build_context(tiny_llm, _zero3(plan_factory, gpus=2))
    assert not buffers.zero3_gathers_in_place(two) and buffers.zero3_gathered_bytes(two) > 0
    sa2va = build_context(tiny_llm, _zero3(plan_factory, stack="sa2va"))
    assert buffers.zero3_gathers_in_place(sa2va) and buffers.zero3_gathered_bytes(sa2va) == 0
    sa2va_two = build_context(tiny_llm, _zero3(plan_factory, gpus=2, stack="sa2va"))
    assert buffers.zero3_gathered_bytes(sa2va_two) == buffers.zero3_gathered_bytes(two) > 0


def test_one_rank_gather_copy_bytes_scaling():
    """With parameter offload every gathered parameter of a one-rank ZeRO-3 is a host-to-GPU copy
    (NoGatherCoalescedHandle's ds_tensor.data.to(device), deepspeed/runtime/zero/partition_parameters.py):
    linear in the gathered count and the dtype's bytes, never above what the host holds (docs/stacks.md,
    15). With the partitions on the GPU the gather is in place (zero3_gathers_in_place, tested above)."""
    copy = buffers.one_rank_gather_copy_bytes
    big = 10**12
    assert copy(gathered_params=10**6, param_bytes=2, held_bytes=big) == 2 * 10**6
    assert copy(gathered_params=2 * 10**6, param_bytes=2, held_bytes=big) == 4 * 10**6
    assert copy(gathered_params=10**6, param_bytes=4, held_bytes=big) == 4 * 10**6
    assert copy(gathered_params=10**9, param_bytes=2, held_bytes=3 * 10**8) == 3 * 10**8


def test_zero3_on_one_rank_with_parameter_offload_gathers_copies(tiny_llm, plan_factory):
    """offload_params cpu/nvme on one rank: the gathered working set is on the GPU as on N = 2 (capped by
    the parameters held); optimizer offload alone changes nothing (the partitions stay on the GPU)."""
    def plan(offload_params, gpus=1):
        return plan_factory(engine={"kind": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu",
                                    "offload_params": offload_params},
                            components={"llm": {"train": "full"}}, hardware={"num_gpus": gpus}, stack={"kind": "sa2va"})

    opt_only = build_context(tiny_llm, plan("none"))
    assert buffers.zero3_gathers_in_place(opt_only) and buffers.zero3_gathered_bytes(opt_only) == 0
    held = TINY_PARAMS * 2  # full training in bf16: every parameter once
    for device in ("cpu", "nvme"):
        one = build_context(tiny_llm, plan(device))
        assert not buffers.zero3_gathers_in_place(one)
        assert buffers.zero3_gathered_bytes(one) == held
        assert 0 < buffers.zero3_backward_gathered_bytes(one) <= held


def test_zero3_linear_saves_the_inputs_of_frozen_linears(tiny_llm, plan_factory):
    """ZeRO-3's LinearFunctionForZeroStage3 saves every linear's input (deepspeed/runtime/zero/linear.py):
    a LoRA layer with dropout keeps 2h + F more per token (the norm outputs and the SwiGLU product),
    under every stack; nothing more without dropout (lora_A saves the same input), with full training
    or below ZeRO-3 (docs/stacks.md, 13)."""
    from memplan.estimate import activations as act
    from memplan.estimate.context import build_context

    def plan(stage=3, dropout=0.05, train="lora", stack="sa2va"):
        llm = {"train": train, "checkpointing": False}
        if train == "lora":
            llm["lora"] = {"rank": 8, "alpha": 16, "dropout": dropout}
        return plan_factory(engine={"kind": "deepspeed", "zero_stage": stage}, components={"llm": llm},
                            stack={"kind": stack})

    llm = tiny_llm.llm
    for stack in ("sa2va", "hf-trainer"):
        ctx = build_context(tiny_llm, plan(stack=stack))
        assert act.zero3_linear_input_bytes_per_token(ctx) == ctx.compute_bytes * (2 * llm.hidden_size + llm.intermediate_size)
        zero2 = build_context(tiny_llm, plan(stage=2, stack=stack))
        assert act.llm_layer_bytes_per_token(ctx) - act.llm_layer_bytes_per_token(zero2) == \
            act.zero3_linear_input_bytes_per_token(ctx)
    assert act.zero3_linear_input_bytes_per_token(build_context(tiny_llm, plan(dropout=0.0))) == 0
    assert act.zero3_linear_input_bytes_per_token(build_context(tiny_llm, plan(stage=2))) == 0
    assert act.zero3_linear_input_bytes_per_token(build_context(tiny_llm, plan(train="full"))) == 0


def test_zero3_gradient_partitions_persist_from_initialize(tiny_llm, plan_factory):
    """stage3.py _setup_for_real_optimizer allocates grad_partitions_flat_buffer at initialize, on the
    GPU unless the optimizer is offloaded; counted once at the end of backward."""
    from memplan.estimate import gradients
    from memplan.estimate.context import build_context
    from memplan.estimate.phases import Shared, backward_phase
    from memplan.spec.vocabulary import Component

    result = estimate(tiny_llm, _zero3(plan_factory))
    for phase in ("init", "forward", "backward", "optimizer_step"):
        assert ("llm", "gradients") in _phase_terms(result, phase), phase
    ctx = build_context(tiny_llm, _zero3(plan_factory))
    backward = backward_phase(ctx, Shared(ctx))
    counted = sum(t.bytes for t in backward.moment.terms if t.category.value == "gradients")
    assert counted == gradients.gradient_bytes(ctx, Component.LLM)
    offloaded = estimate(tiny_llm, _zero3(plan_factory, offload="cpu"))
    assert ("llm", "gradients") not in _phase_terms(offloaded, "forward")
    sa2va = estimate(tiny_llm, _zero3(plan_factory, stack="sa2va"))  # every stack (docs/stacks.md, 10)
    assert ("llm", "gradients") in _phase_terms(sa2va, "forward")


def test_zero3_backward_holds_what_the_backward_gathers_again(tiny_llm, plan_factory):
    """From the end of forward ZeRO-3 keeps gathered only what the backward uses again (the trace's
    replay keeps parameters whose reuse the prefetcher passed; partitioned_param_coordinator.py
    __params_to_release): not the originals behind peft's modules_to_save copies, never fetched, nor
    a component without a graph (docs/stacks.md, 14)."""
    from memplan.estimate import buffers
    from memplan.estimate.context import build_context
    from memplan.estimate.phases import Shared, backward_phase

    plan = plan_factory(engine={"kind": "deepspeed", "zero_stage": 3}, hardware={"num_gpus": 2},
                        components={"llm": {"train": "lora", "modules_to_save": ["embed_tokens", "lm_head"]}})
    ctx = build_context(tiny_llm, plan)
    llm = ctx.parts[Component.LLM]
    forward = buffers.zero3_gathered_bytes(ctx)
    backward = buffers.zero3_backward_gathered_bytes(ctx)
    assert forward == (llm.total + llm.trainable) * ctx.compute_bytes  # under stage3_max_live_parameters
    # tied: one original tensor behind both copies, never gathered
    assert backward == (llm.frozen + llm.trainable - tiny_llm.llm.embedding_params) * ctx.compute_bytes
    moment = backward_phase(ctx, Shared(ctx)).moment
    held = sum(t.bytes for t in moment.terms if t.category.value == "deepspeed_buffers")
    assert held == backward + buffers.ipg_bucket_bytes(ctx)
    one_copy = plan_factory(engine={"kind": "deepspeed", "zero_stage": 3}, hardware={"num_gpus": 2},
                            components={"llm": {"train": "lora", "modules_to_save": ["lm_head"]}})
    ctx = build_context(tiny_llm, one_copy)
    llm = ctx.parts[Component.LLM]
    assert buffers.zero3_backward_gathered_bytes(ctx) == (llm.frozen + llm.trainable) * ctx.compute_bytes
    capped = plan_factory(engine={"kind": "deepspeed", "zero_stage": 3, "stage3_max_live_parameters": 1000},
                          hardware={"num_gpus": 2}, components={"llm": {"train": "lora"}})
    ctx = build_context(tiny_llm, capped)
    assert buffers.zero3_backward_gathered_bytes(ctx) == buffers.zero3_gathered_bytes(ctx) == 1000 * ctx.compute_bytes


def test_tied_output_layer_gets_its_gradient_hook_last(tiny_llm, plan_factory):
    """A fully trained tied head is the embedding's tensor: its AccumulateGrad (where ZeRO-1/2's hook
    sits) runs after the embedding backward, so the bucket does not meet the loss spike; untied, or
    as a peft modules_to_save copy, it does."""
    from memplan.estimate import buffers
    from memplan.estimate.context import build_context

    plan = plan_factory(engine={"kind": "deepspeed", "zero_stage": 2}, components={"llm": {"train": "full"}})
    assert buffers.tied_output_waits(build_context(tiny_llm, plan))
    assert not buffers.output_grad_first(build_context(tiny_llm, plan))
    untied = tiny_llm.model_copy(update={"llm": tiny_llm.llm.model_copy(update={"tie_word_embeddings": False})})
    assert buffers.output_grad_first(build_context(untied, plan))
    copies = plan_factory(engine={"kind": "deepspeed", "zero_stage": 2},
                          components={"llm": {"train": "lora", "modules_to_save": ["lm_head"]}})
    assert buffers.output_grad_first(build_context(tiny_llm, copies))
