"""The InternViT family (InternViT-300M/6B) and the InternVL models built around it.

Both directions: an InternVLVisionConfig -> ``VisionSpec`` (``spec_from_config``) and ``VisionSpec``
-> InternVLVisionConfig (``to_config``, the probe's tower). OpenGVLab's remote-code configs
(``intern_vit_6b``, ``internvl_chat``) are read as transformers' InternVL port reads them
(transformers/models/internvl/convert_internvl_weights_to_hf.py); transformers' own ``internvl``
format is read directly. The InternVL projector (mlp1) is LayerNorm(4C) -> Linear(4C, h) -> GELU ->
Linear(h, h) after the pixel shuffle.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from memplan.integrations.huggingface.base import (
    HAND_WRITTEN_FIELDS, Counts, Recipe, Rule, hf_config, square, with_attention,
)
from memplan.integrations.huggingface.families import llm
from memplan.spec.loading import InputError
from memplan.spec.profile import ProjectorSpec, Spec, VisionSpec

# InternViT's remote configuration_intern_vit.py defaults, and their InternVLVisionConfig names.
_REMOTE_DEFAULTS = {"hidden_size": 3200, "num_hidden_layers": 48, "num_attention_heads": 25, "intermediate_size": 12800,
                    "qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm", "image_size": 224,
                    "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}
_REMOTE_RENAMES = {"qkv_bias": "attention_bias", "qk_normalization": "use_qk_norm"}
LAYER_SCALE_INIT = 0.1  # InternVLVisionConfig.layer_scale_init_value default (configuration_internvl.py)


def rules(prefix: str) -> tuple[Rule, ...]:
    """VisionSpec kinds over transformers' InternVLVision names (layer scale lambda_1/2 counts as norms)."""
    p = re.escape(prefix)
    return (
        (rf"{p}embeddings\.", "vision", "embeddings"),
        (rf"{p}encoder\.layer\.\d+\.attention\.", "vision", "attention"),
        (rf"{p}encoder\.layer\.\d+\.mlp\.", "vision", "mlp"),
        (rf"{p}encoder\.layer\.\d+\.(layernorm_before|layernorm_after|lambda_1|lambda_2)", "vision", "norms"),
    )


# ----------------------------------------------------------------------------- HF config -> spec
def remote_fields(vision: Mapping[str, Any]) -> dict[str, Any]:
    """InternVLVisionConfig fields for a remote-code InternViT config; absolute positions on, mean
    pooling (no final norm)."""
    fields = {**_REMOTE_DEFAULTS, **{k: v for k, v in vision.items() if k in _REMOTE_DEFAULTS}}
    fields = {_REMOTE_RENAMES.get(k, k): v for k, v in fields.items()}
    return {**fields, "use_absolute_position_embeddings": True, "use_mean_pooling": True}


def spec_from_config(vision: Any, where: str) -> VisionSpec:
    """VisionSpec of an InternVLVisionConfig: LayerNorm/RMSNorm, layer scale and CLS always present,
    (image/patch)^2 + 1 learned positions (transformers' InternVLVisionEmbeddings)."""
    image = square(vision.image_size, "image_size", where)
    patch = square(vision.patch_size, "patch_size", where)
    return VisionSpec(
        architecture="internvit",
        num_layers=vision.num_hidden_layers,
        hidden_size=vision.hidden_size,
        num_heads=vision.num_attention_heads,
        intermediate_size=vision.intermediate_size,
        patch_size=patch,
        image_size=image,
        norm="rmsnorm" if vision.norm_type == "rms_norm" else "layernorm",
        qkv_bias=bool(vision.attention_bias),
        qk_norm=bool(vision.use_qk_norm),
        layer_scale=True,
        cls_token=True,
        num_position_embeddings=(image // patch) ** 2 + 1 if vision.use_absolute_position_embeddings else 0,
    )


def intern_vit(config: dict[str, Any], where: str) -> Recipe:
    """A standalone InternViT (model_type intern_vit_6b): transformers' InternVLVisionModel."""
    from transformers import InternVLVisionConfig, InternVLVisionModel

    hf = InternVLVisionConfig(**remote_fields(config))
    return Recipe(lambda: InternVLVisionModel(hf), rules(""), lambda _: {"vision": spec_from_config(hf, where)})


def _internvl(hf: Any, architecture: str, where: str) -> Recipe:
    """InternVLForConditionalGeneration: vision tower, mlp1 projector, language model."""
    from transformers import InternVLForConditionalGeneration

    def specs(_: Counts) -> dict[str, Spec]:
        merge = int(1 / hf.downsample_ratio) ** 2
        text = hf.text_config
        projector = ProjectorSpec(input_size=hf.vision_config.hidden_size, merge_factor=merge,
                                  hidden_size=text.hidden_size, output_size=text.hidden_size)
        # transformers 5 ties lm_head on the top-level flag (InternVLConfig default True)
        language = llm.spec_from_config(text, architecture, hf.tie_word_embeddings)
        return {"vision": spec_from_config(hf.vision_config, where), "projector": projector, "llm": language}

    counting = rules("model.vision_tower.") + (
        (r"model\.multi_modal_projector\.", "projector", "projector"),
    ) + llm.rules("model.language_model.")
    return Recipe(lambda: InternVLForConditionalGeneration(hf), counting, specs)


def internvl_chat(config: dict[str, Any], where: str) -> Recipe:
    """OpenGVLab's remote-code InternVLChatModel, counted as transformers' InternVL port. The LM
    ties its head per llm_config.tie_word_embeddings (remote Qwen2/InternLM2 configs default False)."""
    from transformers import InternVLConfig

    for key in ("vision_config", "llm_config"):
        if not isinstance(config.get(key), dict):
            raise InputError(f"{where}: internvl_chat config without a {key} mapping")
    text, architecture = llm.text_fields(config["llm_config"], where)
    tie = bool(config["llm_config"].get("tie_word_embeddings", False))
    hf = InternVLConfig(vision_config=remote_fields(config["vision_config"]), text_config=text,
                        downsample_ratio=config.get("downsample_ratio", 0.5), tie_word_embeddings=tie)
    return _internvl(hf, architecture, where)


def internvl_hf(config: dict[str, Any], where: str) -> Recipe:
    """transformers' own InternVL format (OpenGVLab/InternVL3-*-hf)."""
    hf = hf_config("internvl", config, where)
    architecture = hf.text_config.model_type
    if architecture not in ("qwen2", "qwen3", "llama"):
        raise InputError(f"{where}: text_config.model_type={architecture!r} is not importable (qwen2, qwen3, llama); {HAND_WRITTEN_FIELDS}")
    return _internvl(hf, architecture, where)


# ----------------------------------------------------------------------------- spec -> HF config
def to_config(spec: VisionSpec, *, attn: str) -> Any:
    """InternVLVisionConfig with the spec's widths, norm, q/k norm, bias and positions; mean pooling
    (no final norm, as InternViT); layer scale initialised at 0.1 where the spec has it."""
    from transformers import InternVLVisionConfig

    config = InternVLVisionConfig(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        image_size=[spec.image_size, spec.image_size],
        patch_size=[spec.patch_size, spec.patch_size],
        attention_bias=spec.qkv_bias,
        use_qk_norm=spec.qk_norm,
        norm_type="rms_norm" if spec.norm == "rmsnorm" else "layer_norm",
        use_absolute_position_embeddings=spec.num_position_embeddings > 0,
        use_mean_pooling=True,
        layer_scale_init_value=LAYER_SCALE_INIT if spec.layer_scale else 0.0,
    )
    return with_attention(config, attn)


def build(spec: VisionSpec, *, attn: str) -> Any:
    """InternVLVisionModel from to_config (random weights). Also the probe's fallback for any tower."""
    from transformers import InternVLVisionModel

    return InternVLVisionModel(to_config(spec, attn=attn))


def model_class() -> type:
    """transformers' InternVLVisionModel (what ``build`` returns)."""
    from transformers import InternVLVisionModel

    return InternVLVisionModel
