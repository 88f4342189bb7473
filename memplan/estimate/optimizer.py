"""Optimizer state and fp32 master weights.

Adam/AdamW keep two moments per trainable parameter (Kingma & Ba 2015): 8 bytes in fp32, or 2 x the
parameter's width when torch.optim.AdamW runs on 16-bit parameters. 8-bit Adam (bitsandbytes)
keeps two 1-byte moments (+ per-block statistics, < 1%). SGD with momentum keeps one buffer.
Mixed precision keeps an fp32 master copy of each trainable parameter (4 bytes, ZeRO's K=12 =
4 master + 8 moments). ZeRO-1 and above partition both 1/N; optimizer offload moves them to host.
"""

from __future__ import annotations

from memplan.estimate import fsdp
from memplan.estimate.context import Context
from memplan.spec.vocabulary import Component


def state_bytes_per_param(ctx: Context, component: Component) -> int:
    kind = ctx.plan.optimizer.kind
    if kind == "sgd":
        return 0
    if kind == "adam8bit":
        return 2
    if not ctx.is_deepspeed and not ctx.plan.precision.master_weights:
        return 2 * ctx.parts[component].trainable_bytes
    return 8


def _moments_like_params(ctx: Context) -> bool:
    """torch.optim.AdamW outside DeepSpeed keeps exp_avg/exp_avg_sq as zeros_like(param): each moment
    in its parameter's dtype (torch/optim/adamw.py, _init_group). The sa2va harness counts that per
    component (one dtype); other stacks hold adapters and copies in different dtypes."""
    return (not ctx.is_deepspeed and ctx.plan.optimizer.kind == "adamw"
            and ctx.stack is not None and ctx.stack.adapters_fp32 is not None)


def master_bytes_per_param(ctx: Context, component: Component) -> int:
    """DeepSpeed keeps fp32 masters when training in 16 bit; plain PyTorch's AMP trains fp32
    parameters directly (counted as trainable weights), so no separate master exists there."""
    if ctx.is_deepspeed and ctx.compute_bytes < 4 and ctx.plan.precision.master_weights:
        return 4
    return 0


def _offloaded(ctx: Context) -> bool:
    return ctx.is_deepspeed and ctx.plan.engine.offload_optimizer != "none"


def optimizer_state_bytes(ctx: Context, component: Component) -> int:
    """trainable x state bytes, / N from ZeRO-1; 0 on the GPU when offloaded."""
    if not ctx.training or _offloaded(ctx):
        return 0
    if ctx.is_fsdp:
        if _moments_like_params(ctx):
            return 0 if fsdp.offloaded(ctx) else 2 * fsdp.sharded_trainable_bytes(ctx, component)
        return fsdp.optimizer_state_bytes(ctx, component, state_bytes_per_param(ctx, component))
    part = ctx.parts[component]
    if _moments_like_params(ctx):
        return 2 * part.trainable_held_bytes
    return ctx.shard(part.trainable * state_bytes_per_param(ctx, component), at_stage=1)


def master_weight_bytes(ctx: Context, component: Component) -> int:
    if not ctx.training or _offloaded(ctx):
        return 0
    trainable = ctx.parts[component].trainable
    return ctx.shard(trainable * master_bytes_per_param(ctx, component), at_stage=1)


def host_optimizer_bytes(ctx: Context) -> int:
    """Node-wide host bytes of offloaded optimizer state + masters (all ranks' partitions)."""
    if not ctx.training or not _offloaded(ctx) or ctx.plan.engine.offload_optimizer != "cpu":
        return 0
    return sum(
        ctx.parts[c].trainable * (state_bytes_per_param(ctx, c) + max(4, master_bytes_per_param(ctx, c)))
        for c in ctx.parts
    )
