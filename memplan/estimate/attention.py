"""Attention's own memory: what eager attention keeps that SDPA and flash attention do not.

transformers' ``eager_attention_forward`` (models/qwen2/modeling_qwen2.py, and the InternVL vision
tower's) computes ``softmax(q k^T * scale, dtype=float32).to(q.dtype) @ v`` on the k and v repeated
to every query head (``repeat_kv``). Autograd then keeps, per layer and sequence, the fp32 softmax
output (4 bytes per head per query-key pair) and its bf16 cast (2): 6 x heads x s^2. SDPA's flash and
memory-efficient kernels save q, k, v, the output and a 4-byte log-sum-exp per head per token, never
the s x s matrix (torch/nn/functional.py, scaled_dot_product_attention). Census (CPU, bf16,
transformers 5.24, eight layer shapes, exact): eager saves 8h + 2q + 4q' + 6F + 6 heads s^2/token
where q' is the query width when k/v are repeated (grouped-query attention) and the k/v width
otherwise; SDPA saves 8h + 4q + 4kv + 6F + 4 heads. Flash attention saves what SDPA's flash kernel
saves.
"""

from __future__ import annotations

from memplan.estimate.context import Context

EAGER_SAVED_PER_PAIR = 6  # fp32 softmax output + its bf16 cast, per head per (query, key) pair
# A layer run without graph (checkpointed forward, frozen tower, inference): the bf16 scores, the
# masked scores, the fp32 softmax and its bf16 cast alive at once.
EAGER_FORWARD_PER_PAIR = 8
# Backward through one layer, at its softmax backward, on top of the 6 the recomputed layer saved: the
# probabilities' gradient cast to fp32 (ToCopyBackward), the softmax backward's fp32 output and an fp32
# temporary it frees at once (3 x 4), less the bf16 probabilities the matmul's backward has released (2):
# 16 x heads x s^2 alive at that moment. Read from the allocator trace of one H100 run (Qwen2.5-1.5B,
# Trainer + peft, checkpointing, 8,320 tokens: replay-d/rd-t-eager-q15-8320; found after its
# pre-registered miss, so in-sample there); it was 8 (2 + 4 + 2, from the op sequence) before.
EAGER_BACKWARD_PER_PAIR = 10


def eager(ctx: Context) -> bool:
    return ctx.plan.attention == "eager"


def llm_pairs(ctx: Context) -> int:
    """Query-key pairs of one LLM layer over all heads: micro-batch x heads x s^2 (causal masking
    does not shrink the dense eager matrix)."""
    llm, inputs = ctx.profile.llm, ctx.plan.inputs
    return inputs.micro_batch * llm.num_heads * inputs.text_tokens**2


def llm_eager_delta_per_token(ctx: Context) -> int:
    """Per token per layer, eager minus SDPA: 4 (q' - kv) - 2q - 4 heads (see the module docstring)."""
    if not eager(ctx):
        return 0
    llm = ctx.profile.llm
    repeated = llm.q_dim if llm.num_heads != llm.num_kv_heads else llm.kv_dim
    return 4 * (repeated - llm.kv_dim) - 2 * llm.q_dim - 4 * llm.num_heads


def llm_saved_pairs_bytes(ctx: Context) -> int:
    """Saved by one LLM layer with a graph: 6 x micro-batch x heads x s^2."""
    return EAGER_SAVED_PER_PAIR * llm_pairs(ctx) if eager(ctx) else 0


def llm_forward_pairs_bytes(ctx: Context) -> int:
    return EAGER_FORWARD_PER_PAIR * llm_pairs(ctx) if eager(ctx) else 0


def llm_backward_pairs_bytes(ctx: Context) -> int:
    return EAGER_BACKWARD_PER_PAIR * llm_pairs(ctx) if eager(ctx) else 0


def vision_pairs(ctx: Context) -> int:
    """Query-key pairs of one ViT layer over all heads and tiles: tiles x heads x (patches + CLS)^2."""
    v, inputs = ctx.profile.vision, ctx.plan.inputs
    tiles = inputs.micro_batch * (inputs.tiles + inputs.frames)
    return tiles * v.num_heads * v.tokens_per_tile**2


def vision_eager_delta_per_token(ctx: Context) -> int:
    """Per token per layer, eager minus SDPA for a multi-head ViT (no repeated k/v): -2h - 4 heads."""
    if not eager(ctx):
        return 0
    v = ctx.profile.vision
    return -2 * v.hidden_size - 4 * v.num_heads


def vision_saved_pairs_bytes(ctx: Context) -> int:
    return EAGER_SAVED_PER_PAIR * vision_pairs(ctx) if eager(ctx) else 0


def vision_forward_pairs_bytes(ctx: Context) -> int:
    return EAGER_FORWARD_PER_PAIR * vision_pairs(ctx) if eager(ctx) else 0
