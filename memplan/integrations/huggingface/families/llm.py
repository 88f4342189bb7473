"""The decoder-only LLM family: Qwen2/2.5, Qwen3, Llama and InternLM2 (counted and built as Llama).

Both directions: a transformers text config -> ``LLMSpec`` (``spec_from_config``, for
``memplan profile import``) and ``LLMSpec`` -> Qwen2Config / Qwen3Config / LlamaConfig
(``to_config``, for the probe's real model). InternLM2 (remote code) fuses wqkv and names its MLP
w1/w3/w2; the same shapes as Llama's q/k/v and gate/up/down, so nothing changes in memory.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from memplan.integrations.huggingface.base import HAND_WRITTEN_FIELDS, Recipe, Rule, hf_config, with_attention
from memplan.spec.loading import InputError
from memplan.spec.profile import LLMSpec

ARCHITECTURES = ("qwen2", "qwen3", "llama", "internlm2")
# InternLM2's remote configuration_internlm2.py defaults (bias=True, tie_word_embeddings=False).
_LLAMA_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size", "rms_norm_eps", "max_position_embeddings", "hidden_act")
MIN_POSITIONS = 4096


def rules(prefix: str, head: str = "lm_head.") -> tuple[Rule, ...]:
    """LLMSpec.param_groups kinds over transformers' Qwen2/Qwen3/Llama parameter names."""
    p, h = re.escape(prefix), re.escape(head)
    return (
        (rf"{p}embed_tokens\.", "llm", "embeddings"),
        (rf"{h}", "llm", "lm_head"),
        (rf"{p}layers\.\d+\.self_attn\.", "llm", "attention"),  # q/k/v/o (+ bias, + Qwen3 q_norm/k_norm)
        (rf"{p}layers\.\d+\.mlp\.", "llm", "mlp"),
        (rf"{p}(layers\.\d+\.\w*layernorm|norm)\.", "llm", "norms"),
    )


# ----------------------------------------------------------------------------- HF config -> spec
def spec_from_config(text: Any, architecture: str, tie_word_embeddings: bool) -> LLMSpec:
    """LLMSpec from a transformers text config. Qwen2 hard-codes q/k/v bias (modeling_qwen2.py
    Qwen2Attention); Qwen3 adds per-head q/k RMSNorm; head_dim is kept only where it differs from
    hidden/heads."""
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None)
    if head_dim is not None and text.hidden_size % heads == 0 and head_dim == text.hidden_size // heads:
        head_dim = None
    return LLMSpec(
        architecture=architecture,
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        num_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate_size=text.intermediate_size,
        vocab_size=text.vocab_size,
        tie_word_embeddings=bool(tie_word_embeddings),
        attention_bias=True if architecture == "qwen2" else bool(getattr(text, "attention_bias", False)),
        qk_norm=architecture == "qwen3",
    )


def text_fields(llm: Mapping[str, Any], where: str) -> tuple[dict[str, Any], str]:
    """(transformers text-config fields, memplan architecture) of an LLM config.json (or InternVL
    llm_config). InternLM2 becomes its Llama equivalent: bias on wqkv/wo = Llama attention_bias."""
    model_type = llm.get("model_type") or {"InternLM2ForCausalLM": "internlm2", "Qwen2ForCausalLM": "qwen2",
                                            "LlamaForCausalLM": "llama"}.get((llm.get("architectures") or [""])[0])
    if model_type == "internlm2":
        fields = {k: llm[k] for k in _LLAMA_SHAPE_KEYS if k in llm}
        fields.update(model_type="llama", attention_bias=bool(llm.get("bias", True)),
                      tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)))
        return fields, "internlm2"
    if model_type in ("qwen2", "qwen3", "llama"):
        return {**llm, "model_type": model_type}, model_type
    raise InputError(f"{where}: LLM model_type={model_type!r} is not importable (qwen2, qwen3, llama, internlm2); {HAND_WRITTEN_FIELDS}")


def causal_lm(config: dict[str, Any], where: str) -> Recipe:
    """A decoder-only LLM config.json: AutoModelForCausalLM.from_config on meta."""
    from transformers import AutoModelForCausalLM

    fields, architecture = text_fields(config, where)
    hf = hf_config(fields["model_type"], fields, where)
    return Recipe(
        build=lambda: AutoModelForCausalLM.from_config(hf),
        rules=rules("model."),
        specs=lambda _: {"llm": spec_from_config(hf, architecture, hf.tie_word_embeddings)},
    )


# ----------------------------------------------------------------------------- spec -> HF config
def to_config(spec: LLMSpec, *, attn: str, max_positions: int) -> Any:
    """Qwen2Config (q/k/v bias built in: Qwen2Attention), Qwen3Config, or LlamaConfig (llama,
    internlm2; mlp_bias off) with the spec's shapes; no KV cache; positions >= 4096."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.dim_per_head,
        tie_word_embeddings=spec.tie_word_embeddings,
        max_position_embeddings=max(max_positions, MIN_POSITIONS),
        use_cache=False,
    )
    if spec.architecture == "qwen2":
        config = Qwen2Config(**common)
    elif spec.architecture == "qwen3":
        config = Qwen3Config(attention_bias=spec.attention_bias, **common)
    else:
        config = LlamaConfig(attention_bias=spec.attention_bias, mlp_bias=False, **common)
    return with_attention(config, attn)


def build(spec: LLMSpec, *, attn: str, max_positions: int) -> Any:
    """Qwen2ForCausalLM / Qwen3ForCausalLM / LlamaForCausalLM from to_config (random weights)."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

    config = to_config(spec, attn=attn, max_positions=max_positions)
    cls = {"qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM}.get(spec.architecture, LlamaForCausalLM)
    return cls(config)
