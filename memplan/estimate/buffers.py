"""Engine buffers and the optimizer step's temporaries.

DeepSpeed ZeRO-1/2 (deepspeed/runtime/zero/stage_1_and_2.py): with contiguous_gradients each rank
allocates an ipg buffer of reduce_bucket_size elements in the compute dtype at the first backward,
two when overlap_comm; at the step the rank's gradient partition is converted to fp32 (4 P_t/N).
ZeRO-3 (stage3.py, partitioned_param_coordinator.py): parameters are all-gathered module by module;
the fetched working set is the largest module plus the prefetch bucket, capped by
stage3_max_live_parameters; gradients are reduced through a reduce_bucket_size buffer.
DDP (plain PyTorch on several GPUs) keeps its gradient buckets beside param.grad (P_t x grad bytes;
torch.nn.parallel.DistributedDataParallel, gradient_as_bucket_view=False).
"""

from __future__ import annotations

from memplan.estimate import fsdp
from memplan.estimate.context import Context
from memplan.spec.vocabulary import Component


def ipg_bucket_bytes(ctx: Context) -> int:
    """reduce_bucket_size x compute bytes, x2 with overlap_comm (ZeRO-1/2 with gradient hooks), whatever
    the model's size: measured 2.0 GiB at the first backward of a 3M-parameter model on an H100
    (5e8 elements x 2 bytes x 2 buffers), reports/probes/h100-probe-dev.jsonl."""
    if not (ctx.training and ctx.is_deepspeed and ctx.total_trainable):
        return 0
    engine = ctx.plan.engine
    if ctx.zero_stage in (1, 2):
        if not (ctx.zero_stage == 2 or engine.overlap) or not engine.contiguous_gradients:
            return 0
        buffers = 2 if engine.overlap else 1
        return buffers * engine.reduce_bucket_size * ctx.compute_bytes
    if ctx.zero_stage == 3:
        return engine.reduce_bucket_size * ctx.compute_bytes
    return 0


def largest_module_params(ctx: Context) -> int:
    """Largest set of parameters one forward call gathers: the (trainable copy of the) embedding
    or lm_head, or one decoder layer, or one ViT layer."""
    candidates = [0]
    if ctx.profile.llm is not None:
        llm = ctx.profile.llm
        candidates.append(llm.embedding_params)
        candidates.append(llm.layer_params)
    if ctx.profile.vision is not None:
        candidates.append(ctx.profile.vision.layer_params)
    return max(candidates)


def zero3_gathered_bytes(ctx: Context) -> int:
    """ZeRO-3 working set of all-gathered parameters, in the compute dtype.

    A gathered parameter is released after use only if it will not be reused within
    stage3_max_reuse_distance parameters (default 1e9); in a forward whose parameters the backward
    reuses, that keeps up to stage3_max_live_parameters (default 1e9) gathered
    (deepspeed/runtime/zero/partitioned_param_coordinator.py). Working set = min(max live, all
    parameters the step touches, largest module + prefetch bucket when reuse is off)."""
    if not (ctx.is_deepspeed and ctx.zero_stage == 3):
        return 0
    engine = ctx.plan.engine
    total = sum(p.total + p.trainable for p in ctx.parts.values())
    if engine.stage3_max_reuse_distance >= largest_module_params(ctx):
        live = min(engine.stage3_max_live_parameters, total)
    else:
        live = min(engine.stage3_max_live_parameters, largest_module_params(ctx) + engine.stage3_prefetch_bucket_size)
    return live * ctx.compute_bytes


def hpz_secondary_bytes(ctx: Context) -> int:
    """ZeRO++ hpZ (zero_hpz_partition_size = H > 1): after its first use every parameter keeps a
    secondary partition over H ranks (one node) in its dtype, beside the primary 1/N one, for the
    backward all-gather inside the node (deepspeed/runtime/zero/partition_parameters.py,
    _partition_param_sec: ds_secondary_tensor of aligned numel // H); invalidated after each step."""
    hpz = ctx.plan.engine.zero_hpz_partition_size
    if not (ctx.is_deepspeed and ctx.zero_stage == 3 and hpz > 1):
        return 0
    total = sum(p.frozen * p.weight_bytes + p.trainable * p.trainable_bytes for p in ctx.parts.values())
    return -(-total // hpz)


def output_grad_first(ctx: Context) -> bool:
    """Whether a trained parameter gets its gradient during the loss backward, before any decoder
    layer's: a trained lm_head (a modules_to_save copy, in-place training, a fully trained LLM).
    DeepSpeed ZeRO-1/2 allocates its ipg bucket at the first gradient hook
    (stage_1_and_2.py, reduce_independent_p_g_buckets_and_remove_grads), so only then does the bucket
    coincide with the loss backward's spike; with LoRA alone the first gradients come from the last
    layer, after the spike is freed."""
    llm = ctx.plan.components.llm
    if ctx.profile.llm is None or not ctx.plan.trains(Component.LLM):
        return False
    if llm.train == "full" or "lm_head" in llm.modules_to_save:
        return True
    tied_in_place = ctx.profile.llm.tie_word_embeddings and ctx.plan.stack.embeddings_training == "in_place"
    return tied_in_place and "embed_tokens" in llm.modules_to_save


def ddp_bucket_bytes(ctx: Context) -> int:
    if ctx.is_deepspeed or ctx.is_fsdp or ctx.num_gpus == 1 or not ctx.training:
        return 0
    return sum(p.trainable_held_bytes for p in ctx.parts.values())


def step_transient_bytes(ctx: Context) -> int:
    """Temporaries of one optimizer step on the GPU.

    DeepSpeed ZeRO-1/2/3 without offload: the fp32 copy of this rank's gradient partition (4 P_t/N).
    torch.optim.AdamW with foreach: one temporary per parameter group (exp_avg_sq.sqrt()), the size
    of the state (torch/optim/adamw.py _multi_tensor_adamw); the fused kernel (Trainer's default
    adamw_torch_fused, torch/optim/adamw.py _fused_adamw) updates in place. Offload: the step runs on the host.
    """
    if not ctx.training or not ctx.total_trainable:
        return 0
    if ctx.is_deepspeed:
        if ctx.plan.engine.offload_optimizer != "none" or ctx.zero_stage == 0:
            return 0
        return ctx.shard(4 * ctx.total_trainable, at_stage=1)
    if ctx.plan.optimizer.kind in ("adamw",) and ctx.plan.optimizer.foreach and not ctx.stack.fused_optimizer:
        if ctx.is_fsdp:  # on the sharded parameters; on the host under CPUOffloadPolicy
            return 0 if fsdp.offloaded(ctx) else sum(fsdp.sharded_trainable_bytes(ctx, c) for c in ctx.parts)
        return sum(p.trainable_held_bytes for p in ctx.parts.values())
    return 0


def init_transient_bytes(ctx: Context) -> int:
    """DeepSpeed ZeRO-1/2 flattens the trainable 16-bit parameters into one buffer at initialize:
    for a moment the old tensors and the flat copy coexist (stage_1_and_2.py, flatten_dense_tensors)."""
    if ctx.is_deepspeed and ctx.zero_stage in (0, 1, 2) and ctx.training:
        return sum(p.trainable_held_bytes for p in ctx.parts.values())
    return 0


def lm_head_grad_bytes(ctx: Context) -> int:
    """Gradient of the trainable lm_head copy, produced at the very start of backward (FSDP2: part of
    its unit's reduce-scatter term, fsdp.reduce_scatter_bytes)."""
    if ctx.is_fsdp:
        return 0
    llm = ctx.profile.llm
    if llm is None or "lm_head" not in ctx.plan.components.llm.modules_to_save or not ctx.training:
        return 0
    return llm.embedding_params * ctx.parts[Component.LLM].copies_bytes
