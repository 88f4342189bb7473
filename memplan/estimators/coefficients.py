"""Bytes that autograd saves per token, as integer coefficients of a layer's widths.

Measured by benchmarks/census.py: the real transformers/peft modules run forward on the CPU in
bf16 under torch.autograd.graph.saved_tensors_hooks, the distinct saved storages are summed, and the
per-token-per-layer bytes over eight random layer shapes are fitted exactly (residual < 3 bytes).
Read against the modeling code they decompose as stated in each comment. ``heads`` is the fp32
log-sum-exp that SDPA's flash/efficient kernels save (4 bytes per head per token).

Device difference, stated rather than fitted: on CUDA nn.Dropout runs the fused native_dropout
kernel, which saves a 1-byte bool mask beside its 2-byte output (3 bytes per element); the CPU path
saves a 2-byte scaled noise tensor (4 bytes). DROPOUT_BYTES below is the CUDA value.
"""

from __future__ import annotations

# transformers 5.17 Qwen2DecoderLayer (RMSNorm, GQA SDPA, SwiGLU), bf16, weights frozen, input
# requiring grad: 2 RMSNorms save their fp32 input (8h); SDPA saves q, k, v (2q + 4kv) and its
# output (2q); o_proj's input is a contiguous copy of it (2q) only when o_proj's weight trains...
# fitted: 8h + 4q + 4kv + 6F (SiLU input + both mul operands: 3 x 2F) + 4 heads.
LLM_FROZEN = {"h": 8, "q": 4, "kv": 4, "ffn": 6, "heads": 4}
# Full training adds the linear inputs kept for weight gradients (norm outputs 2 x 2h, o_proj 2q... ):
# fitted 16h + 4q + 4kv + 8F + 4 heads.
LLM_FULL = {"h": 16, "q": 4, "kv": 4, "ffn": 8, "heads": 4}
# peft LoRA per wrapped linear (no dropout): 4 bytes per input element (the input kept for lora_A's
# weight gradient and the base layer's cast) and 4 bytes per rank element (lora_A output for lora_B).
LORA_PER_INPUT = 4
LORA_PER_RANK = 4
DROPOUT_BYTES = 3  # CUDA fused dropout: 2-byte output + 1-byte mask per element (CPU: 4)
DROPOUT_BYTES_CPU = 4

# Under torch.autocast with fp32 LLM weights (the recipe's upcast, plain PyTorch): per LoRA linear
# 6 bytes per input element with dropout on the CPU (fp32 input cast to bf16 for the base matmul
# and for lora_A) and 2 per rank element; every linear also saves the bf16 cast of its fp32 weight:
# 2 bytes per layer parameter per micro-batch (autocast re-casts frozen weights on each call).
LORA_UPCAST_PER_INPUT = 6 - (DROPOUT_BYTES_CPU - DROPOUT_BYTES)
LORA_UPCAST_PER_RANK = 2
UPCAST_WEIGHT_CAST_BYTES = 2

# transformers InternVLVisionLayer (LayerNorm, SDPA, GELU MLP, layer scale), bf16, per token:
# frozen weights with input requiring grad 12h + 2F; fully trained 20h + 4F (+ 4 bytes/head).
VIT_FROZEN = {"h": 12, "ffn": 2, "heads": 4}
VIT_FULL = {"h": 20, "ffn": 4, "heads": 4}

# HF ForCausalLMLoss over the full vocabulary, per token per vocabulary entry (measured with a
# live-storage tracker, tests/test_census.py): the forward keeps bf16 logits (2) and their fp32
# copy (4) while log_softmax writes its fp32 output (4, saved): peak 10 V, 4 V kept after the
# loss; backward adds the nll gradient and log_softmax's input gradient, fp32: 8 V more.
LOGITS_FORWARD_PEAK = 10
LOGITS_SAVED = 4
LOGITS_BACKWARD_EXTRA = 8
