"""What the Hugging Face adapters share: counting rules, a recipe per config, the config reader.

torch and transformers are imported inside functions only (``memplan profile`` starts without them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from memplan.spec.loading import InputError
from memplan.spec.profile import Spec

SLOT_ORDER = ("vision", "projector", "llm", "sam2", "seg_head")  # the order of profiles/sa2va-*.yaml
Rule = tuple[str, str, str]  # (regex on the parameter name, profile slot, module kind)
Counts = dict[str, dict[str, int]]  # profile slot -> module kind -> parameters

HAND_WRITTEN_FIELDS = (
    "a hand-written profile needs, for an LLM: kind, architecture (qwen2|qwen3|llama|internlm2), num_layers, "
    "hidden_size, num_heads, num_kv_heads, intermediate_size, vocab_size [head_dim, tie_word_embeddings, "
    "attention_bias, qk_norm]; for a vision tower: kind, architecture, num_layers, hidden_size, num_heads, "
    "intermediate_size, patch_size; see docs/own-model.md"
)


class SpecMismatchError(InputError):
    """The instantiated model has parameters memplan's spec formulas cannot express."""


@dataclass(frozen=True)
class Recipe:
    """What one config becomes: a model to build on meta, how to count it, the specs it maps to."""

    build: Callable[[], Any]
    rules: tuple[Rule, ...]
    specs: Callable[[Counts], dict[str, Spec]]  # SAM2 takes its data-only counts from the model


def hf_config(model_type: str, fields: Mapping[str, Any], where: str) -> Any:
    """transformers' config class for model_type (AutoConfig.for_model), built from the config's own fields."""
    from transformers import AutoConfig

    rest = {k: v for k, v in fields.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **rest)
    except (TypeError, ValueError, KeyError) as error:
        raise InputError(f"{where}: transformers cannot read this {model_type} config: {str(error).splitlines()[0]}") from None


def square(value: Any, field: str, where: str) -> int:
    """An int from an int or a square [n, n] pair (image_size, patch_size)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise InputError(f"{where}: {field}={list(value)}: memplan's specs need a square size")
        return int(value[0])
    return int(value)


def with_attention(config: Any, attn: str) -> Any:
    """``config`` with transformers' attention implementation set (eager, sdpa, flash_attention_2)."""
    config._attn_implementation = attn
    return config
