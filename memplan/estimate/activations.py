"""Activations (tensors saved for backward) and the forward/backward transients of each component.

Which components keep a graph follows the gradient paths of the Sa2VA wiring
(vision -> projector -> LLM -> [SEG] hidden state -> seg head -> SAM2 mask decoder -> mask loss):
a component saves activations when it trains or when a trained component lies upstream of it.
Per-token coefficients come from the saved-tensor census (coefficients.py); token counts from the
profile (448px tiles of 1024 patches + CLS, 256 LLM tokens per tile after pixel shuffle; SAM2 at
resolution R sees (R/4)^2 stage-1 tokens and decodes masks on (R/16)^2 image tokens).
"""

from __future__ import annotations

from memplan.estimate import attention
from memplan.estimate import coefficients as k
from memplan.estimate import fsdp
from memplan.estimate import loss
from memplan.estimate.context import Context
from memplan.spec.vocabulary import Component


def needs_graph(ctx: Context, component: Component) -> bool:
    """A component saves activations if it trains or gradients must flow through it upstream
    (resolved once in Context.graph, following context.UPSTREAM)."""
    return ctx.graph.get(component, False)


# ---------------------------------------------------------------- token counts
def llm_tokens(ctx: Context) -> int:
    """b x s: micro-batch times the sequence (image tokens included)."""
    return ctx.plan.inputs.micro_batch * ctx.plan.inputs.text_tokens


def vision_tiles(ctx: Context) -> int:
    inputs = ctx.plan.inputs
    return inputs.micro_batch * (inputs.tiles + inputs.frames)


def image_tokens(ctx: Context) -> int:
    """LLM tokens the images occupy: tiles x Profile.image_tokens_per_tile (256 per 448px InternVL tile)."""
    if ctx.profile.vision is None:
        return 0
    return vision_tiles(ctx) * ctx.profile.image_tokens_per_tile


# ---------------------------------------------------------------- LLM
def _dot(coefficients: dict[str, int], widths: dict[str, int]) -> int:
    return sum(c * widths[name] for name, c in coefficients.items())


def _llm_widths(ctx: Context) -> dict[str, int]:
    llm = ctx.profile.llm
    return {"h": llm.hidden_size, "q": llm.q_dim, "kv": llm.kv_dim, "ffn": llm.intermediate_size,
            "heads": llm.num_heads}


def _computed_weight_bytes(ctx: Context) -> int:
    """Bytes per LLM weight element as the forward sees it (FSDP2: the all-gathered param_dtype)."""
    if ctx.is_fsdp and ctx.plan.engine.fsdp.param_dtype is not None:
        return fsdp.param_bytes(ctx, ctx.parts[Component.LLM].weight_bytes)
    return ctx.parts[Component.LLM].weight_bytes


def _upcast(ctx: Context) -> bool:
    return _computed_weight_bytes(ctx) == 4 and ctx.compute_bytes < 4


def residual_bytes(ctx: Context) -> int:
    """Bytes per element of the LLM's residual stream: fp32 when its weights are fp32."""
    return _computed_weight_bytes(ctx)


def _lora_table(ctx: Context) -> dict[str, int]:
    """Which census table applies: upcast (autocast, fp32 base; also fp32 adapters on a bf16 base
    under autocast, census: the same 10h + 2q + 2F + 14r), fp32 adapters without autocast (plain
    PyTorch master weights, peft's default in a plain loop) or bf16 adapters (DeepSpeed casts the
    module); dropout adds its own table."""
    dropout = bool(ctx.plan.components.llm.lora.dropout)
    fp32_adapters = ctx.parts[Component.LLM].trainable_bytes == 4 and ctx.compute_bytes < 4
    if ctx.is_fsdp and ctx.plan.engine.fsdp.param_dtype == "compute":
        fp32_adapters = False  # FSDP2 all-gathers the adapters in MixedPrecisionPolicy.param_dtype
    if _upcast(ctx) or (fp32_adapters and ctx.stack.autocast):  # autocast re-casts the fp32 input
        return k.LORA_UPCAST_DROPOUT if dropout else k.LORA_UPCAST
    table = dict(k.LORA_FP32 if fp32_adapters else k.LORA_BF16)
    if dropout:
        for name, c in (k.LORA_FP32_DROPOUT if fp32_adapters else k.LORA_BF16_DROPOUT).items():
            table[name] = table.get(name, 0) + c
    return table


def llm_layer_bytes_per_token(ctx: Context) -> int:
    """Saved bytes per token in one decoder layer without checkpointing (census coefficients).

    frozen 8h+4q+4kv+6F+4a; full 16h+4q+4kv+8F+4a; LoRA adds its table (coefficients.py), scaled by
    the share of the 7 linears it wraps when targets are a subset.
    """
    part = ctx.plan.components.llm
    widths = _llm_widths(ctx)
    if part.train == "full" and ctx.training:
        return _dot(k.LLM_FULL, widths)
    total = _dot(k.LLM_FROZEN, widths)
    if part.train == "lora" and ctx.training:
        widths = {**widths, "rank": part.lora.rank}
        extra = _dot(_lora_table(ctx), widths)
        targets = part.lora.targets
        if targets is not None:
            extra = extra * len(set(targets)) // k.LORA_LINEARS
        total += extra
    return total + zero3_linear_input_bytes_per_token(ctx)


# inputs of a decoder layer's linears: (width, the linears that read it); o_proj's input is SDPA's own
# output (saved by SDPA), so it is not among them (zero3_linear_input_bytes_per_token)
_LINEAR_INPUTS = (("h", ("q_proj", "k_proj", "v_proj")), ("h", ("gate_proj", "up_proj")), ("ffn", ("down_proj",)))


def zero3_linear_input_bytes_per_token(ctx: Context) -> int:
    """ZeRO-3 replaces torch.nn.functional.linear by LinearFunctionForZeroStage3 (deepspeed.zero.Init,
    and Init(module=...) in deepspeed.initialize, with zero_optimization.memory_efficient_linear, default
    true: partition_parameters.py, _enable_mem_efficient_linear), whose setup_context does
    ``ctx.save_for_backward(input, weight, bias)`` whatever requires grad (deepspeed/runtime/zero/linear.py).
    Autograd's own linear saves the input only for the weight's gradient, so under ZeRO-3 a frozen
    linear in the graph keeps its input too: per decoder layer the attention norm's output (h, read by
    q/k/v), the MLP norm's output (h, gate/up) and the SwiGLU product (F, down), compute bytes each.
    o_proj's input is not counted: on CUDA SDPA's output is already (b, s, heads, d)-contiguous, so
    transformers' ``attn_output.transpose(1, 2).contiguous()`` is that same tensor, which SDPA saves.
    None where the input is saved anyway: fully trained weights, or a LoRA adapter without dropout on
    one of the linears reading it (lora_A then saves the very same tensor). Checkpointed layers keep
    only their inputs; this counts in their recompute (llm_recomputed_layer_bytes)."""
    if not (ctx.is_deepspeed and ctx.zero_stage == 3 and ctx.training and needs_graph(ctx, Component.LLM)):
        return 0
    part = ctx.plan.components.llm
    if part.train == "full":
        return 0
    widths = _llm_widths(ctx)
    total = 0
    for width, readers in _LINEAR_INPUTS:
        if part.train == "lora" and not part.lora.dropout:
            targets = part.lora.targets
            if targets is None or any(name in targets for name in readers):
                continue  # lora_A saves this input itself
        total += widths[width]
    return ctx.compute_bytes * total


def llm_weight_casts(ctx: Context) -> int:
    """Under autocast with fp32 weights every linear saves the bf16 cast of its weight:
    2 bytes x (layer parameters + LoRA parameters) per layer, per forward."""
    if not _upcast(ctx):
        return 0
    llm = ctx.profile.llm
    per_layer = llm.layer_params
    lora = ctx.parts[Component.LLM].trainable - ctx.parts[Component.LLM].copies
    return k.UPCAST_WEIGHT_CAST_BYTES * (per_layer + max(lora, 0) // llm.num_layers)


def llm_activation_bytes(ctx: Context) -> int:
    """Saved for backward at the end of the forward, logits excluded.

    Checkpointing (non-reentrant torch.utils.checkpoint, HF): each layer keeps only its input,
    residual_bytes * h per token; otherwise L * tokens * per-layer census bytes (+ weight casts).
    Plus the final RMSNorm's fp32 input (4h per token).
    """
    if not needs_graph(ctx, Component.LLM):
        return 0
    llm, tokens = ctx.profile.llm, llm_tokens(ctx)
    final_norm = 4 * llm.hidden_size * tokens
    if ctx.plan.components.llm.checkpointing:
        return llm.num_layers * residual_bytes(ctx) * llm.hidden_size * tokens + final_norm
    per_layer = llm_recomputed_layer_bytes(ctx)
    return llm.num_layers * per_layer + final_norm


def llm_recomputed_layer_bytes(ctx: Context) -> int:
    """One decoder layer's saved bytes: census bytes per token x tokens + weight casts, and under
    eager attention its s x s probabilities (memplan.estimate.attention)."""
    per_token = llm_layer_bytes_per_token(ctx) + attention.llm_eager_delta_per_token(ctx)
    return per_token * llm_tokens(ctx) + llm_weight_casts(ctx) + attention.llm_saved_pairs_bytes(ctx)


logits_saved_bytes = loss.logits_saved_bytes
largest_block_bytes = loss.largest_block_bytes


def llm_kept_output_bytes(ctx: Context) -> int:
    """What a loop that keeps the model output holds from its forward through backward, the step and
    the next forward, until ``out`` is rebound (memplan.estimate.loss; measured on the H200 custom-loop
    runs: their forward and step phases were under by exactly the kept logits before this): the
    logits and, with output_hidden_states, the layer outputs checkpointing does not keep (under
    accelerate's fp32 outputs every hidden state is a new fp32 copy: all of them, 4 bytes)."""
    kept = loss.kept_logits_bytes(ctx)
    if loss.keeps_hidden_states(ctx):
        if ctx.stack.outputs_fp32:
            llm = ctx.profile.llm
            kept += (llm.num_layers + 1) * 4 * llm.hidden_size * llm_tokens(ctx)
        else:
            kept += _hidden_states_bytes(ctx)
    return kept


def _hidden_states_bytes(ctx: Context) -> int:
    """output_hidden_states: one residual-stream tensor per layer (+ the embeddings) that
    checkpointing does not already keep."""
    llm, tokens = ctx.profile.llm, llm_tokens(ctx)
    kept = llm.num_layers if (ctx.plan.components.llm.checkpointing and needs_graph(ctx, Component.LLM)) else 0
    return (llm.num_layers + 1 - kept) * residual_bytes(ctx) * llm.hidden_size * tokens


def llm_forward_transient(ctx: Context) -> int:
    """Live at the loss on top of saved activations: bf16 + fp32 logits (6 V per token, 10 V when
    nothing is saved) and, with output_hidden_states, one residual-stream tensor per layer that
    checkpointing does not already keep. Inference (no labels): bf16 logits, 2 V per token."""
    llm, tokens = ctx.profile.llm, llm_tokens(ctx)
    if not ctx.training:
        return ctx.compute_bytes * tokens * llm.vocab_size + llm_layer_working_set(ctx) + attention.llm_forward_pairs_bytes(ctx)
    logits = loss.logits_forward_peak_bytes(ctx) - logits_saved_bytes(ctx)
    hidden = 0
    if ctx.plan.inputs.output_hidden_states:
        hidden = _hidden_states_bytes(ctx)
    layer = attention.llm_forward_pairs_bytes(ctx) if ctx.plan.components.llm.checkpointing else 0
    return max(logits + hidden, layer)


def llm_layer_working_set(ctx: Context) -> int:
    """One layer's intermediates alive at once in a forward without graph: q, k, v, attention
    output and the MLP's gate, up and product (2 bytes each)."""
    llm, tokens = ctx.profile.llm, llm_tokens(ctx)
    return ctx.compute_bytes * tokens * (llm.q_dim + 2 * llm.kv_dim + llm.q_dim + 3 * llm.intermediate_size)


def llm_loss_backward_transient(ctx: Context) -> int:
    """The loss backward's spike (8 V per token in fp32; memplan.estimate.loss)."""
    if not needs_graph(ctx, Component.LLM):
        return 0
    return loss.logits_backward_bytes(ctx)


def llm_layers_backward_transient(ctx: Context) -> int:
    """One layer's backward: its gradient buffers (2 x (h + F) per token in the compute dtype, and
    eager attention's probability gradients) plus, with checkpointing, the recomputed layer."""
    if not needs_graph(ctx, Component.LLM):
        return 0
    llm, tokens = ctx.profile.llm, llm_tokens(ctx)
    grads = 2 * ctx.compute_bytes * tokens * (llm.hidden_size + llm.intermediate_size)
    grads += attention.llm_backward_pairs_bytes(ctx)
    recompute = llm_recomputed_layer_bytes(ctx) if ctx.plan.components.llm.checkpointing else 0
    return recompute + grads


# ---------------------------------------------------------------- vision tower and projector
def vision_activation_bytes(ctx: Context) -> int:
    """Trained ViT: per token per layer 20h + 4F (+4 bytes/head), frozen-with-graph 12h + 2F;
    tokens = tiles x (patches + CLS). Checkpointing keeps one h-wide input per layer."""
    if not needs_graph(ctx, Component.VISION):
        return 0
    v = ctx.profile.vision
    tokens = vision_tiles(ctx) * v.tokens_per_tile
    if ctx.stack.vision_checkpointing:
        return v.num_layers * ctx.compute_bytes * v.hidden_size * tokens
    coefficients = k.VIT_FULL if ctx.plan.components.vision.train == "full" else k.VIT_FROZEN
    widths = {"h": v.hidden_size, "ffn": v.intermediate_size, "heads": v.num_heads}
    per_token = _dot(coefficients, widths) + attention.vision_eager_delta_per_token(ctx)
    per_layer = per_token * tokens + attention.vision_saved_pairs_bytes(ctx)
    return v.num_layers * per_layer + vision_weight_casts(ctx)


def vision_weight_casts(ctx: Context) -> int:
    """fp32 tower weights under autocast (precision.weights_fp32): each linear saves the bf16 cast of
    its weight for the input gradient, 2 bytes x the tower's layer parameters per forward."""
    part = ctx.parts[Component.VISION]
    if part.weight_bytes != 4 or ctx.compute_bytes == 4:
        return 0
    return k.UPCAST_WEIGHT_CAST_BYTES * ctx.profile.vision.layer_params * ctx.profile.vision.num_layers


def vision_forward_transient(ctx: Context) -> int:
    """A frozen ViT runs without a graph: at most one layer's qkv, attention output and MLP
    hidden alive (2 bytes each), plus the layer input and output."""
    v = ctx.profile.vision
    tokens = vision_tiles(ctx) * v.tokens_per_tile
    working = ctx.compute_bytes * tokens * (3 * v.hidden_size + v.intermediate_size + 3 * v.hidden_size)
    return working + attention.vision_forward_pairs_bytes(ctx)


def projector_activation_bytes(ctx: Context) -> int:
    """mlp1 per merged token: LayerNorm input and output (2 x 2 x 4C), fc1 output and GELU output
    (2 x 2 x h): 16C + 4h bytes (the pixel-shuffled input is a copy when the graph is kept)."""
    if not needs_graph(ctx, Component.PROJECTOR):
        return 0
    p = ctx.profile.projector
    merged = image_tokens(ctx)
    return merged * ctx.compute_bytes * (3 * p.merged_size + 2 * p.hidden_size)


# ---------------------------------------------------------------- SAM2
def sam2_images(ctx: Context) -> int:
    return ctx.plan.inputs.micro_batch


def sam2_feature_bytes(ctx: Context) -> int:
    """Image features the mask decoder reads, kept through backward: the (R/16)^2 x 256 embedding
    and the high-resolution features (R/4)^2 x 32 and (R/8)^2 x 64, per image, compute dtype."""
    if ctx.profile.sam2 is None:
        return 0
    r = ctx.plan.inputs.sam2_resolution
    n = ctx.profile.sam2.neck_dim
    per_image = (r // 16) ** 2 * n + (r // 4) ** 2 * (n // 8) + (r // 8) ** 2 * (n // 4)
    return sam2_images(ctx) * per_image * ctx.compute_bytes


def sam2_encoder_transient(ctx: Context) -> int:
    """Frozen Hiera under no_grad: the stage-1 block is the widest point, (R/4)^2 tokens of width
    C: block input, normed input, qkv (3C), attention output, MLP hidden (4C) and output,
    2 bytes each, plus the FPN's four 256-wide maps."""
    s = ctx.profile.sam2
    r = ctx.plan.inputs.sam2_resolution
    stage1 = (r // 4) ** 2 * s.embed_dim * (1 + 1 + 3 + 1 + 4 + 1)
    fpn = sum((r // (4 * 2**i)) ** 2 for i in range(4)) * s.neck_dim
    return sam2_images(ctx) * (stage1 + fpn) * ctx.compute_bytes


def sam2_decoder_activation_bytes(ctx: Context) -> int:
    """Per object the decoder works on its own copy of the image embedding.

    Two-way transformer (depth 2, width 256, attention downsampled to 128): about 24 saved
    tensors of (R/16)^2 x 256; upscaling: 6 of (R/8)^2 x 64 and 8 of (R/4)^2 x 32; the four
    output masks (R/4)^2 and their loss terms in fp32 (3 x 4 bytes).
    """
    if not needs_graph(ctx, Component.SAM2_DECODER) or ctx.profile.sam2 is None:
        return 0
    r = ctx.plan.inputs.sam2_resolution
    e = ctx.compute_bytes
    per_object = (
        24 * (r // 16) ** 2 * 256 * e
        + 6 * (r // 8) ** 2 * 64 * e
        + 8 * (r // 4) ** 2 * 32 * e
        + 4 * (r // 4) ** 2 * (e + 12)
    )
    return ctx.plan.inputs.micro_batch * ctx.plan.inputs.objects * per_object


def seg_head_activation_bytes(ctx: Context) -> int:
    """[SEG] hidden states through Linear-ReLU-Linear: 2 x h + 256 per object, negligible."""
    if not needs_graph(ctx, Component.SEG_HEAD) or ctx.profile.seg_head is None:
        return 0
    s = ctx.profile.seg_head
    return ctx.plan.inputs.micro_batch * ctx.plan.inputs.objects * ctx.compute_bytes * (3 * s.input_size + s.output_size)
