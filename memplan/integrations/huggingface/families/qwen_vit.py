"""The Qwen-VL vision family: the Qwen2.5-VL and Qwen3-VL towers, their merger (memplan's projector).

Both directions: a Qwen2_5_VLVisionConfig / Qwen3VLVisionConfig -> (``VisionSpec``, ``ProjectorSpec``)
(``specs_from_config``) and back (``to_config``, the probe's tower). The ViT's ``merger`` (and Qwen3-VL's
deepstack mergers) map to the ProjectorSpec; a 'tile' is 32x32 patches (patch*32 px), 256 LLM tokens
after the 2x2 merge.
"""

from __future__ import annotations

import math
import re
from typing import Any

from memplan.integrations.huggingface.base import Counts, Recipe, Rule, hf_config, with_attention
from memplan.integrations.huggingface.families import llm
from memplan.spec.profile import ProjectorSpec, Spec, VisionSpec

ARCHITECTURES = ("qwen2_5_vl", "qwen3_vl")
TILE_PATCHES = 32  # patches per tile side: 32x32 patches -> 256 tokens after the 2x2 merge
DEFAULT_WINDOW = 112  # Qwen2_5_VLVisionConfig.window_size default (pixels)
DEFAULT_POSITIONS = 2304  # Qwen3VLVisionConfig.num_position_embeddings default
DEFAULT_MERGE = 4  # spatial_merge_size 2 -> 2x2 patches per token


def rules(prefix: str) -> tuple[Rule, ...]:
    """VisionSpec/ProjectorSpec kinds over transformers' Qwen2.5-VL / Qwen3-VL ``visual`` module."""
    p = re.escape(prefix)
    return (
        (rf"{p}(patch_embed|pos_embed)\.", "vision", "embeddings"),
        (rf"{p}blocks\.\d+\.attn\.", "vision", "attention"),
        (rf"{p}blocks\.\d+\.mlp\.", "vision", "mlp"),
        (rf"{p}blocks\.\d+\.norm[12]\.", "vision", "norms"),
        (rf"{p}merger\.", "projector", "projector"),
        (rf"{p}deepstack_merger_list\.", "projector", "deepstack"),
    )


def deepstack_indexes(num_layers: int, count: int) -> list[int]:
    """Evenly spaced vision layers feeding Qwen3-VL's deepstack mergers (e.g. 24 layers, 3 -> 5, 11, 17)."""
    step = num_layers // (count + 1)
    return [step * (i + 1) - 1 for i in range(count)]


# ----------------------------------------------------------------------------- HF config -> spec
def specs_from_config(vision: Any, architecture: str) -> tuple[VisionSpec, ProjectorSpec]:
    """The tower and its merger from a Qwen2.5-VL / Qwen3-VL vision config: Qwen2.5-VL has RMSNorm,
    a SwiGLU MLP, windowed attention and no learned positions; Qwen3-VL LayerNorm, a plain MLP, a
    learned position table and deepstack mergers (modeling_qwen2_5_vl.py, modeling_qwen3_vl.py)."""
    qwen3 = architecture == "qwen3_vl"
    merge = vision.spatial_merge_size**2
    tower = VisionSpec(
        architecture=architecture,
        num_layers=vision.depth, hidden_size=vision.hidden_size, num_heads=vision.num_heads,
        intermediate_size=vision.intermediate_size, patch_size=vision.patch_size,
        image_size=vision.patch_size * TILE_PATCHES,
        temporal_patch_size=vision.temporal_patch_size, norm="layernorm" if qwen3 else "rmsnorm",
        qkv_bias=True, gated_mlp=not qwen3, patch_bias=qwen3,
        num_position_embeddings=vision.num_position_embeddings if qwen3 else 0,
        window_size=None if qwen3 else vision.window_size,
        full_attention_layers=() if qwen3 else tuple(vision.fullatt_block_indexes),
    )
    merger = ProjectorSpec(
        input_size=vision.hidden_size, merge_factor=merge, hidden_size=vision.hidden_size * merge,
        output_size=vision.out_hidden_size, norm="layernorm" if qwen3 else "rmsnorm", norm_after_merge=False,
        deepstack_mergers=len(vision.deepstack_visual_indexes) if qwen3 else 0,
    )
    return tower, merger


def qwen_vl(config: dict[str, Any], where: str) -> Recipe:
    """Qwen2.5-VL / Qwen3-VL (*ForConditionalGeneration): tower, merger, language model."""
    import transformers

    model_type = config["model_type"]
    hf = hf_config(model_type, config, where)
    qwen3 = model_type == "qwen3_vl"
    model_class = transformers.Qwen3VLForConditionalGeneration if qwen3 else transformers.Qwen2_5_VLForConditionalGeneration

    def specs(_: Counts) -> dict[str, Spec]:
        tower, merger = specs_from_config(hf.vision_config, model_type)
        language = llm.spec_from_config(hf.text_config, "qwen3" if qwen3 else "qwen2", hf.tie_word_embeddings)
        return {"vision": tower, "projector": merger, "llm": language}

    counting = rules("model.visual.") + llm.rules("model.language_model.")
    return Recipe(lambda: model_class(hf), counting, specs)


# ----------------------------------------------------------------------------- spec -> HF config
def to_config(spec: VisionSpec, projector: ProjectorSpec | None, *, attn: str) -> Any:
    """Qwen2_5_VLVisionConfig or Qwen3VLVisionConfig; the merger projects to the projector's output
    width (the tower's own width without a projector)."""
    out = projector.output_size if projector else spec.hidden_size
    common = dict(
        depth=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        out_hidden_size=out,
        spatial_merge_size=int(math.isqrt(projector.merge_factor if projector else DEFAULT_MERGE)),
    )
    if spec.architecture == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

        config = Qwen2_5_VLVisionConfig(
            window_size=spec.window_size or DEFAULT_WINDOW, fullatt_block_indexes=list(spec.full_attention_layers),
            **common,
        )
    else:
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

        count = projector.deepstack_mergers if projector else 0
        config = Qwen3VLVisionConfig(
            num_position_embeddings=spec.num_position_embeddings or DEFAULT_POSITIONS,
            deepstack_visual_indexes=deepstack_indexes(spec.num_layers, count),
            **common,
        )
    return with_attention(config, attn)


def build(spec: VisionSpec, projector: ProjectorSpec | None, *, attn: str) -> Any:
    """Qwen2_5_VisionTransformerPretrainedModel or Qwen3VLVisionModel from to_config (random weights)."""
    config = to_config(spec, projector, attn=attn)
    if spec.architecture == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        return Qwen2_5_VisionTransformerPretrainedModel(config)
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    return Qwen3VLVisionModel(config)
