"""Gradients of the trainable parameters, per GPU.

Plain PyTorch: one gradient per trainable parameter in the parameter's dtype (param.grad).
DeepSpeed ZeRO-1/2 (deepspeed/runtime/zero/stage_1_and_2.py): gradients in the compute dtype;
stage 1 keeps them whole until the reduce at the step, stage 2 reduces each bucket as it fills and
keeps only this rank's partition (P_t/N). ZeRO-3 keeps a partition too. ZeRO-0 with bf16 uses
BF16_Optimizer (deepspeed/runtime/bf16_optimizer.py), which accumulates into fp32 buffers (4 P_t) and
frees each 16-bit param.grad once added.
With optimizer offload, the partitioned gradients are copied to pinned host memory instead.
"""

from __future__ import annotations

from memplan.estimate import fsdp
from memplan.estimate.context import Context
from memplan.spec.vocabulary import Component


def gradient_bytes(ctx: Context, component: Component) -> int:
    """Resident gradient bytes of one component on a GPU after backward (before the step)."""
    part = ctx.parts[component]
    if not ctx.training or part.trainable == 0:
        return 0
    if ctx.is_fsdp:
        return fsdp.sharded_gradient_bytes(ctx, component)
    if not ctx.is_deepspeed:
        return part.trainable_held_bytes  # param.grad has its parameter's dtype
    grad_bytes = ctx.compute_bytes
    if ctx.zero_stage == 0:
        return part.trainable * (4 if grad_bytes < 4 else grad_bytes)  # fp32 accumulators
    if ctx.zero_stage >= 2 and ctx.plan.engine.offload_optimizer != "none":
        return 0
    return ctx.shard(part.trainable * grad_bytes, at_stage=2)


def host_gradient_bytes(ctx: Context) -> int:
    """Node-wide host bytes for gradients under optimizer offload: fp32 partitions, one per rank,
    so the node holds 4 P_t in total (stage_1_and_2.py: single_partition_of_fp32_groups grads)."""
    if not ctx.is_deepspeed or ctx.plan.engine.offload_optimizer == "none" or not ctx.training:
        return 0
    return 4 * ctx.total_trainable
