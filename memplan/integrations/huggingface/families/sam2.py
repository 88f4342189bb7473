"""The SAM2 family: a Hiera trunk, the FPN neck, prompt encoder, mask decoder (and, for video, memory).

Both directions: a Sam2Config / Sam2VideoConfig -> ``Sam2Spec`` (``spec_from_config``; the trunk and
neck are checked against the Hiera formulas, mask decoder, prompt encoder and memory counts are data
read off the instantiated model) and ``Sam2Spec`` -> Sam2Config at a given input resolution
(``to_config``, the probe's SAM2). Sources: transformers/models/sam2/configuration_sam2.py and
modeling_sam2.py (Sam2Model, Sam2HieraDetModel), modeling_sam2_video.py (Sam2VideoModel).
"""

from __future__ import annotations

from typing import Any

from memplan.integrations.huggingface.base import Counts, Recipe, Rule, SpecMismatchError, hf_config, square, with_attention
from memplan.spec.profile import Sam2Spec, Spec

STRIDES = (4, 8, 16)  # the FPN levels the mask decoder reads: image side / 4, / 8, / 16

RULES: tuple[Rule, ...] = (
    (r"vision_encoder\.backbone\.blocks\.\d+\.(attn|proj)\.", "sam2", "trunk_attention"),  # proj: stage change
    (r"vision_encoder\.backbone\.blocks\.\d+\.mlp\.", "sam2", "trunk_mlp"),
    (r"vision_encoder\.backbone\.blocks\.\d+\.layer_norm[12]\.", "sam2", "trunk_norms"),
    (r"vision_encoder\.backbone\.(patch_embed\.|pos_embed$|pos_embed_window$)", "sam2", "trunk_embeddings"),
    (r"vision_encoder\.neck\.", "sam2", "neck"),
    (r"prompt_encoder\.", "sam2", "prompt_encoder"),
    (r"mask_decoder\.", "sam2", "mask_decoder"),
    (r"(?!vision_encoder\.)", "sam2", "memory"),  # memory attention/encoder, no-memory embeddings, obj ptrs
)


# ----------------------------------------------------------------------------- HF config -> spec
def check_trunk(backbone: Any, where: str) -> None:
    """Sam2Spec needs 4 Hiera stages whose widths double (embed_dim * 2^i)."""
    expected = [backbone.hidden_size * 2**i for i in range(4)]
    if list(backbone.embed_dim_per_stage) != expected or len(backbone.blocks_per_stage) != 4:
        raise SpecMismatchError(
            f"{where}: embed_dim_per_stage={list(backbone.embed_dim_per_stage)}, blocks_per_stage="
            f"{list(backbone.blocks_per_stage)}: Sam2Spec needs 4 stages whose widths double ({expected})"
        )


def spec_from_config(hf: Any, measured: Counts, where: str) -> Sam2Spec:
    """Sam2Spec from a Sam2Config: trunk and neck fields from the config, the data-only counts from
    ``measured`` (the instantiated model's parameters per module kind)."""
    backbone = hf.vision_config.backbone_config
    kinds = measured.get("sam2", {})
    return Sam2Spec(
        embed_dim=backbone.hidden_size, num_heads=backbone.num_attention_heads,
        stages=tuple(backbone.blocks_per_stage), global_attention_blocks=tuple(backbone.global_attention_blocks),
        window_spec=tuple(backbone.window_size_per_stage),
        window_pos_embed_bkg=tuple(backbone.window_positional_embedding_background_size),
        neck_dim=hf.vision_config.fpn_hidden_size, image_size=square(backbone.image_size, "image_size", where),
        mask_decoder_params=kinds.get("mask_decoder", 0), prompt_encoder_params=kinds.get("prompt_encoder", 0),
        memory_params=kinds.get("memory", 0),
    )


def sam2(config: dict[str, Any], where: str) -> Recipe:
    """SAM2 (Sam2Model: image encoder, prompt encoder, mask decoder) or SAM2 video (Sam2VideoModel: +
    memory attention, memory encoder, object pointers)."""
    import transformers

    video = config["model_type"] == "sam2_video"
    hf = hf_config(config["model_type"], config, where)
    check_trunk(hf.vision_config.backbone_config, where)
    model_class = transformers.Sam2VideoModel if video else transformers.Sam2Model
    return Recipe(lambda: model_class(hf), RULES, lambda measured: {"sam2": spec_from_config(hf, measured, where)})


# ----------------------------------------------------------------------------- spec -> HF config
def to_config(spec: Sam2Spec, *, resolution: int, attn: str) -> Any:
    """Sam2Config with a Hiera trunk from the spec (stage widths c, 2c, 4c, 8c; heads h, 2h, 4h, 8h);
    feature sizes follow ``resolution`` (strides 4, 8, 16)."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2.configuration_sam2 import Sam2MaskDecoderConfig, Sam2PromptEncoderConfig

    c, h = spec.embed_dim, spec.num_heads
    backbone = Sam2HieraDetConfig(
        hidden_size=c,
        num_attention_heads=h,
        image_size=[resolution, resolution],
        blocks_per_stage=list(spec.stages),
        embed_dim_per_stage=[c, 2 * c, 4 * c, 8 * c],
        num_attention_heads_per_stage=[h, 2 * h, 4 * h, 8 * h],
        window_size_per_stage=list(spec.window_spec),
        global_attention_blocks=list(spec.global_attention_blocks),
        window_positional_embedding_background_size=list(spec.window_pos_embed_bkg),
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[8 * c, 4 * c, 2 * c, c],
        backbone_feature_sizes=[[resolution // s] * 2 for s in STRIDES],
        fpn_hidden_size=spec.neck_dim,
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=spec.neck_dim, image_size=resolution),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=spec.neck_dim),
    )
    return with_attention(config, attn)


def build(spec: Sam2Spec, *, resolution: int, attn: str) -> Any:
    """Sam2Model from to_config (random weights; no memory attention/encoder: image use)."""
    from transformers import Sam2Model

    return Sam2Model(to_config(spec, resolution=resolution, attn=attn))
