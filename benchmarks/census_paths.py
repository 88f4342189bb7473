"""Saved-tensor census of the paths the user stacks add: the InternVL vision layer, eager attention, the
logits/loss path and the peft/Trainer paths (fp32 adapters under autocast), on the real
transformers/peft modules (CPU, bf16), each returning bytes comparable with
memplan/estimate/coefficients.py and memplan/estimate/attention.py. benchmarks/census.py prints them;
tests/test_census.py checks a fast subset against the estimator's constants.

Conventions: per token per layer = the difference over two sequence lengths and two layer counts
(constants and the embedding cancel); eager attention's s^2 part = the second difference over three
lengths; the loss path is measured with memplan.probe.tracker.StorageTracker (live storages), per
token per vocabulary entry as the difference over two vocabulary sizes.
"""

from __future__ import annotations

import torch

from census import _saved_bytes, llm_layer_bytes

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------- LLM paths


def llm_per_token_layer(mode: str, shape: tuple[int, ...], *, attn: str = "sdpa", tokens: tuple[int, int] = (32, 64),
                        **kwargs) -> float:
    """Saved bytes per token per decoder layer on one (h, heads, head_dim, kv, ffn, rank) shape."""
    h, heads, head_dim, kv, ffn, rank = shape
    per = {}
    for layers in (1, 2):
        low, high = (llm_layer_bytes(mode, h, heads, head_dim, kv, ffn, rank, 0.0, t, layers, attn=attn, **kwargs)
                     for t in tokens)
        per[layers] = (high - low) / (tokens[1] - tokens[0])
    return per[2] - per[1]


def eager_layer(shape: tuple[int, ...]) -> dict[str, float]:
    """Eager attention in one frozen decoder layer (input requiring grad): saved bytes per head per
    (query, key) pair (the s^2 coefficient) and per token (the linear one), from the per-layer bytes
    (2 layers minus 1) at s = 16, 32, 48."""
    h, heads, head_dim, kv, ffn, rank = shape
    sizes = (16, 32, 48)
    per_layer = [llm_layer_bytes("frozen", h, heads, head_dim, kv, ffn, rank, 0.0, s, 2, attn="eager")
                 - llm_layer_bytes("frozen", h, heads, head_dim, kv, ffn, rank, 0.0, s, 1, attn="eager") for s in sizes]
    step = sizes[1] - sizes[0]
    a = (per_layer[2] - 2 * per_layer[1] + per_layer[0]) / (2 * step * step)
    b = (per_layer[1] - per_layer[0]) / step - a * (sizes[0] + sizes[1])
    return {"per_head_pair": a / heads, "per_token": b}


# --------------------------------------------------------------------------- ViT


def vit_layer_bytes(mode: str, h: int, heads: int, ffn: int, tiles: int, layers: int, *, attn: str = "sdpa") -> int:
    """Saved bytes of ``layers`` InternVLVisionLayers over ``tiles`` tiles of 1025 tokens (448 px, patch 14).

    mode frozen: weights frozen, input requiring grad (a frozen tower behind transformers 5's
    enable_input_require_grads hook); full: weights trained."""
    from transformers import InternVLVisionConfig
    from transformers.models.internvl.modeling_internvl import InternVLVisionLayer

    config = InternVLVisionConfig(hidden_size=h, num_attention_heads=heads, intermediate_size=ffn, num_hidden_layers=layers,
                                  attention_bias=True, use_qk_norm=False, norm_type="layer_norm",
                                  layer_scale_init_value=0.1)
    config._attn_implementation = attn
    stack = torch.nn.ModuleList(InternVLVisionLayer(config) for _ in range(layers)).to(torch.bfloat16)
    stack.requires_grad_(mode == "full")
    x = torch.randn(tiles, 1025, h, dtype=torch.bfloat16, requires_grad=True)

    def run():
        hidden = x
        for layer in stack:
            out = layer(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
        return list(stack.parameters())

    return _saved_bytes(run)


def vit_per_token_layer(mode: str, shape: tuple[int, int, int], *, attn: str = "sdpa") -> float:
    """Per token (of 1025 per tile) per layer, from 1 and 2 tiles and 1 and 2 layers."""
    h, heads, ffn = shape
    per = {}
    for layers in (1, 2):
        one, two = (vit_layer_bytes(mode, h, heads, ffn, tiles, layers, attn=attn) for tiles in (1, 2))
        per[layers] = (two - one) / 1025
    return per[2] - per[1]


# --------------------------------------------------------------------------- logits and loss


def loss_path_bytes(vocab: int, *, tokens: int = 64, hidden: int = 16) -> dict[str, int]:
    """Live bytes of HF's causal-LM loss on bf16 logits (lm_head -> ForCausalLMLoss), tracked:
    forward peak and what stays saved after it (both over the hidden states), backward's extra peak."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    from memplan.probe.tracker import StorageTracker

    head = torch.nn.Linear(hidden, vocab, bias=False).to(torch.bfloat16).requires_grad_(False)
    states = torch.randn(1, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens))
    with StorageTracker(device_type="cpu") as tracker:
        tracker.track([head.weight, states, labels])
        base = tracker.current()
        tracker.reset_peak()
        logits = head(states)
        loss = ForCausalLMLoss(logits, labels, vocab_size=vocab)
        forward_peak = tracker.peak() - base
        del logits
        saved = tracker.current() - base
        tracker.reset_peak()
        before = tracker.current()
        loss.backward()
        backward_extra = tracker.peak() - before
    return {"forward_peak": forward_peak, "saved": saved, "backward_extra": backward_extra}


def loss_per_token_vocab(tokens: int = 64) -> dict[str, float]:
    """Bytes per token per vocabulary entry of each loss_path_bytes reading (vocab 2048 vs 4096)."""
    low, high = loss_path_bytes(2048, tokens=tokens), loss_path_bytes(4096, tokens=tokens)
    return {key: (high[key] - low[key]) / (tokens * 2048) for key in low}


# --------------------------------------------------------------------------- report


SHAPES = [(128, 4, 32, 2, 384, 8), (256, 8, 16, 4, 640, 32)]
VIT_SHAPES = [(64, 4, 128), (96, 6, 256)]


def widths(shape: tuple[int, ...], *, eager_repeat: bool = False) -> dict[str, int]:
    h, heads, head_dim, kv, ffn, rank = shape
    q = heads * head_dim
    return {"h": h, "q": q, "kv": (q if eager_repeat and heads != kv else kv * head_dim), "ffn": ffn,
            "heads": heads, "rank": rank}


def report() -> dict[str, object]:
    """Every measurement above on the census shapes (a few seconds on a CPU)."""
    out: dict[str, object] = {}
    for shape in SHAPES:
        key = "x".join(map(str, shape))
        out[f"llm/frozen/{key}"] = llm_per_token_layer("frozen", shape)
        out[f"llm/lora-bf16/{key}"] = llm_per_token_layer("lora", shape)
        out[f"llm/lora-fp32/{key}"] = llm_per_token_layer("lora", shape, adapters_fp32=True)
        out[f"llm/lora-fp32-autocast/{key}"] = llm_per_token_layer("lora", shape, adapters_fp32=True, autocast=True)
        out[f"llm/frozen-eager/{key}"] = eager_layer(shape)
    for shape in VIT_SHAPES:
        key = "x".join(map(str, shape))
        out[f"vit/frozen-with-graph/{key}"] = vit_per_token_layer("frozen", shape)
        out[f"vit/full/{key}"] = vit_per_token_layer("full", shape)
    out["loss/per-token-per-vocab"] = loss_per_token_vocab()
    return out
