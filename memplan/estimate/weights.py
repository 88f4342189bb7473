"""Weights: frozen parameters and trainable parameters resident on each GPU.

ZeRO-3 partitions every parameter, frozen ones included, 1/N per GPU (arXiv 1910.02054, P_os+g+p);
parameters under stage3_param_persistence_threshold elements stay whole (DeepSpeed's
stage3_param_persistence_threshold, default 1e5): those are norms and biases, a small share that we
count whole. Parameter offload (ZeRO-Infinity, arXiv 2104.07857) moves the partitions to host.
"""

from __future__ import annotations

from memplan.estimate import fsdp
from memplan.estimate.context import Context
from memplan.spec.vocabulary import Component


def _on_device(ctx: Context, num_bytes: int) -> int:
    if ctx.is_deepspeed and ctx.zero_stage == 3 and ctx.plan.engine.offload_params != "none":
        return 0
    return ctx.shard(num_bytes, at_stage=3)


def frozen_weight_bytes(ctx: Context, component: Component) -> int:
    """frozen parameters x bytes per parameter (compute dtype, fp32 after an upcast), / N at ZeRO-3."""
    if ctx.is_fsdp:
        return fsdp.sharded_weight_bytes(ctx, component, trainable=False)
    part = ctx.parts[component]
    return _on_device(ctx, part.frozen * part.weight_bytes)


def trainable_weight_bytes(ctx: Context, component: Component) -> int:
    """trainable parameters x bytes as the model holds them (LoRA A/B at the adapters' dtype,
    modules_to_save copies and fully trained weights at theirs: PartCounts.trainable_held_bytes)."""
    if ctx.is_fsdp:
        return fsdp.sharded_weight_bytes(ctx, component, trainable=True)
    part = ctx.parts[component]
    return _on_device(ctx, part.trainable_held_bytes)


def host_weight_bytes(ctx: Context) -> int:
    """Bytes of parameters held in host RAM on the whole node under ZeRO-3 parameter offload:
    every rank keeps its 1/N partition in pinned memory, so the node holds one full copy."""
    if not (ctx.is_deepspeed and ctx.zero_stage == 3 and ctx.plan.engine.offload_params == "cpu"):
        return 0
    return held_weight_bytes(ctx)


def held_weight_bytes(ctx: Context) -> int:
    """Every parameter once, each in the dtype it is held in: frozen weights at their weight dtype,
    trainable ones at theirs (PartCounts.trainable_held_bytes)."""
    return sum(p.frozen * p.weight_bytes + p.trainable_held_bytes for p in ctx.parts.values())
