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
# peft LoRA on every linear of the layer (q,k,v,o,gate,up,down), added to LLM_FROZEN. Which tensors
# are saved depends on the adapters' dtype: DeepSpeed's bf16 engine casts the whole module, adapters
# included, to bf16; plain PyTorch keeps trainable parameters fp32 (peft's autocast_adapter_dtype),
# so peft casts each adapter input to fp32 (a 4-byte copy per input element).
# Census (dropout 0): bf16 adapters 4h + 2F + 14r; fp32 adapters 20h + 4q + 4F + 28r.
LORA_BF16 = {"h": 4, "ffn": 2, "rank": 14}
LORA_FP32 = {"h": 20, "q": 4, "ffn": 4, "rank": 28}
# Dropout 0.05 on the CPU census added 16h + 4q + 2F (bf16) and 20h + 4q + 4F (fp32): per wrapped
# linear a noise tensor and the dropped output replace the shared input. CUDA's fused dropout keeps a
# 1-byte mask instead of the noise (2 or 4 bytes), which gives the values below.
LORA_BF16_DROPOUT = {"h": 11, "q": 3, "ffn": 1}
LORA_FP32_DROPOUT = {"h": 5, "q": 1, "ffn": 1}
# Under torch.autocast with fp32 base weights (the recipe's upcast on plain PyTorch) and fp32
# adapters, with dropout: census 30h + 6q + 6F + 14r over LLM_FROZEN on the CPU; with CUDA's 1-byte
# mask for the fp32 dropout noise: 15h + 3q + 3F + 14r. Without dropout one mask byte less per input.
LORA_UPCAST_DROPOUT = {"h": 15, "q": 3, "ffn": 3, "rank": 14}
LORA_UPCAST = {"h": 10, "q": 2, "ffn": 2, "rank": 14}
LORA_LINEARS = 7  # q, k, v, o, gate, up, down: a target subset scales the tables by its share
# Every linear also saves the bf16 cast of its fp32 weight under autocast: 2 bytes per layer
# parameter per micro-batch (autocast re-casts frozen weights on each call).
UPCAST_WEIGHT_CAST_BYTES = 2

# transformers InternVLVisionLayer (LayerNorm, SDPA, GELU MLP, layer scale), bf16, per token:
# frozen weights with input requiring grad 12h + 2F; fully trained 20h + 4F (+ 4 bytes/head).
VIT_FROZEN = {"h": 12, "ffn": 2, "heads": 4}
VIT_FULL = {"h": 20, "ffn": 4, "heads": 4}

# HF ForCausalLMLoss over the full vocabulary, per token per vocabulary entry (measured with a
# live-storage tracker, memplan/probe/tracker.py): the forward keeps bf16 logits (2) and their fp32
# copy (4) while log_softmax writes its fp32 output (4, saved): peak 10 V, 4 V kept after the
# loss; backward adds the nll gradient and log_softmax's input gradient, fp32: 8 V more.
LOGITS_FORWARD_PEAK = 10
LOGITS_SAVED = 4
LOGITS_BACKWARD_EXTRA = 8
