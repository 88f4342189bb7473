"""Plan a model memplan does not ship: import a Hugging Face ``config.json``, or compose components.

``import_config`` maps a config's fields onto the specs of memplan.spec.profile, builds the matching
transformers model on the meta device (shapes only: no weights, no download) and checks that the
spec formulas (``Profile.component_params()`` and each spec's ``param_groups()``) equal the
instantiated model's parameter counts exactly, per component and per module kind. Where a spec
cannot express the architecture, the import fails and names the module kind that differs.

Supported ``model_type`` values (transformers 5.x classes in brackets):
  qwen2, qwen3, llama [*ForCausalLM]; internlm2 (remote code; counted as the Llama it is equivalent
  to: fused wqkv = q,k,v; w1/w3/w2 = gate/up/down); intern_vit_6b (InternViT, remote code)
  [InternVLVisionModel]; internvl_chat (remote code) and internvl [InternVLForConditionalGeneration];
  qwen2_5_vl, qwen3_vl [*ForConditionalGeneration]; sam2 [Sam2Model], sam2_video [Sam2VideoModel].

``compose`` builds a Sa2VA-style profile from component profiles; ``write_profile`` writes YAML in
the style of profiles/. torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import yaml
from pydantic import ValidationError

from memplan.spec.loading import InputError, describe_validation_error, profile_from_document, read_document
from memplan.spec.profile import LLMSpec, Profile, ProjectorSpec, Sam2Spec, SegHeadSpec, Spec, VisionSpec

ConfigSource = Union[str, Path, Mapping[str, Any]]
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
class ImportResult:
    """An imported profile and the parameter counts of the model instantiated from the same config."""

    profile: Profile
    measured: Counts  # slot -> module kind -> parameters of the transformers model on meta
    model_class: str


@dataclass(frozen=True)
class _Recipe:
    """What one config becomes: a model to build on meta, how to count it, the specs it maps to."""

    build: Callable[[], Any]
    rules: tuple[Rule, ...]
    specs: Callable[[Counts], dict[str, Spec]]  # SAM2 takes its data-only counts from the model


# ----------------------------------------------------------------------------- reading the config
def _read(config: ConfigSource) -> tuple[dict[str, Any], str]:
    """(config mapping, source string). A path is read as JSON; a mapping is used as given."""
    if isinstance(config, Mapping):
        return dict(config), str(config.get("_name_or_path") or "(config mapping)")
    path = Path(config)
    return read_document(path), str(path)


def default_name(config: ConfigSource) -> str:
    """A profile name for a config: the folder name of ``.../NAME/config.json``, else the file stem."""
    if isinstance(config, Mapping):
        named = str(config.get("_name_or_path") or config.get("model_type") or "imported")
        return named.rstrip("/").split("/")[-1].lower()
    path = Path(config)
    stem = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    return stem.lower()


def _transformers():
    """Import torch and transformers lazily, with the install hint when they are missing."""
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as error:
        raise InputError(f"profile import needs torch and transformers ({error.name} missing): pip install 'memplan[probe]'") from None
    return transformers


def _on_meta(build: Callable[[], Any]) -> Any:
    """Run a model constructor with the meta device as default: shapes without memory or weights."""
    import torch

    with torch.device("meta"):
        return build()


def _hf_config(model_type: str, fields: Mapping[str, Any], where: str):
    """transformers' config class for model_type, built from the config's own fields."""
    from transformers import AutoConfig

    rest = {k: v for k, v in fields.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **rest)
    except (TypeError, ValueError, KeyError) as error:
        raise InputError(f"{where}: transformers cannot read this {model_type} config: {str(error).splitlines()[0]}") from None


def _square(value: Any, field: str, where: str) -> int:
    """An int from an int or a square [n, n] pair (image_size, patch_size)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise InputError(f"{where}: {field}={list(value)}: memplan's specs need a square size")
        return int(value[0])
    return int(value)


# ----------------------------------------------------------------------------- counting rules
def _llm_rules(prefix: str, head: str = "lm_head.") -> tuple[Rule, ...]:
    """LLMSpec.param_groups kinds over transformers' Qwen2/Qwen3/Llama parameter names."""
    p, h = re.escape(prefix), re.escape(head)
    return (
        (rf"{p}embed_tokens\.", "llm", "embeddings"),
        (rf"{h}", "llm", "lm_head"),
        (rf"{p}layers\.\d+\.self_attn\.", "llm", "attention"),  # q/k/v/o (+ bias, + Qwen3 q_norm/k_norm)
        (rf"{p}layers\.\d+\.mlp\.", "llm", "mlp"),
        (rf"{p}(layers\.\d+\.\w*layernorm|norm)\.", "llm", "norms"),
    )


def _internvit_rules(prefix: str) -> tuple[Rule, ...]:
    """VisionSpec kinds over transformers' InternVLVision names (layer scale lambda_1/2 counts as norms)."""
    p = re.escape(prefix)
    return (
        (rf"{p}embeddings\.", "vision", "embeddings"),
        (rf"{p}encoder\.layer\.\d+\.attention\.", "vision", "attention"),
        (rf"{p}encoder\.layer\.\d+\.mlp\.", "vision", "mlp"),
        (rf"{p}encoder\.layer\.\d+\.(layernorm_before|layernorm_after|lambda_1|lambda_2)", "vision", "norms"),
    )


def _qwen_vit_rules(prefix: str) -> tuple[Rule, ...]:
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


SAM2_RULES: tuple[Rule, ...] = (
    (r"vision_encoder\.backbone\.blocks\.\d+\.(attn|proj)\.", "sam2", "trunk_attention"),  # proj: stage change
    (r"vision_encoder\.backbone\.blocks\.\d+\.mlp\.", "sam2", "trunk_mlp"),
    (r"vision_encoder\.backbone\.blocks\.\d+\.layer_norm[12]\.", "sam2", "trunk_norms"),
    (r"vision_encoder\.backbone\.(patch_embed\.|pos_embed$|pos_embed_window$)", "sam2", "trunk_embeddings"),
    (r"vision_encoder\.neck\.", "sam2", "neck"),
    (r"prompt_encoder\.", "sam2", "prompt_encoder"),
    (r"mask_decoder\.", "sam2", "mask_decoder"),
    (r"(?!vision_encoder\.)", "sam2", "memory"),  # memory attention/encoder, no-memory embeddings, obj ptrs
)


def count_parameters(model: Any, rules: tuple[Rule, ...], where: str = "model") -> Counts:
    """Parameters of ``model`` per (slot, module kind): the first matching rule wins; tied weights
    are counted once (``named_parameters`` drops duplicates). An unmatched parameter is an error."""
    compiled = [(re.compile(pattern), slot, kind) for pattern, slot, kind in rules]
    counts: Counts = {}
    for name, parameter in model.named_parameters():
        match = next(((slot, kind) for pattern, slot, kind in compiled if pattern.match(name)), None)
        if match is None:
            raise SpecMismatchError(
                f"{where}: parameter {name} ({parameter.numel():,}) of the instantiated {type(model).__name__} "
                "belongs to no module kind memplan's specs count; they cannot express this architecture exactly"
            )
        slot, kind = match
        counts.setdefault(slot, {})
        counts[slot][kind] = counts[slot].get(kind, 0) + parameter.numel()
    return counts


def component_counts(counts: Counts) -> dict[str, int]:
    """Per memplan Component (the keys of Profile.component_params): SAM2 split into the encoder
    (trunk, neck, memory modules) and the decoder (mask decoder + prompt encoder)."""
    out: dict[str, int] = {}
    for slot, kinds in counts.items():
        if slot == "sam2":
            decoder = kinds.get("mask_decoder", 0) + kinds.get("prompt_encoder", 0)
            out["sam2_encoder"] = sum(kinds.values()) - decoder
            out["sam2_decoder"] = decoder
        else:
            out[slot] = sum(kinds.values())
    return out


# ----------------------------------------------------------------------------- specs from configs
def _llm_spec(text: Any, architecture: str, tie_word_embeddings: bool) -> LLMSpec:
    """LLMSpec from a transformers text config. Qwen2 hard-codes q/k/v bias (modeling_qwen2.py);
    Qwen3 adds per-head q/k RMSNorm; head_dim is kept only where it differs from hidden/heads."""
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


# InternLM2's remote configuration_internlm2.py defaults (bias=True, tie_word_embeddings=False).
_LLAMA_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size", "rms_norm_eps", "max_position_embeddings", "hidden_act")


def _text_fields(llm: Mapping[str, Any], where: str) -> tuple[dict[str, Any], str]:
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


def _causal_lm(config: dict[str, Any], where: str) -> _Recipe:
    """A decoder-only LLM: AutoModelForCausalLM.from_config on meta."""
    from transformers import AutoModelForCausalLM

    fields, architecture = _text_fields(config, where)
    hf = _hf_config(fields["model_type"], fields, where)
    return _Recipe(
        build=lambda: AutoModelForCausalLM.from_config(hf),
        rules=_llm_rules("model."),
        specs=lambda _: {"llm": _llm_spec(hf, architecture, hf.tie_word_embeddings)},
    )


# InternViT's remote configuration_intern_vit.py defaults, and their InternVLVisionConfig names.
_INTERNVIT_DEFAULTS = {"hidden_size": 3200, "num_hidden_layers": 48, "num_attention_heads": 25, "intermediate_size": 12800,
                       "qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm", "image_size": 224,
                       "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}
_INTERNVIT_RENAMES = {"qkv_bias": "attention_bias", "qk_normalization": "use_qk_norm"}


def _internvit_fields(vision: Mapping[str, Any]) -> dict[str, Any]:
    """InternVLVisionConfig fields for a remote-code InternViT config (as transformers'
    convert_internvl_weights_to_hf.py maps them); absolute positions on, mean pooling (no final norm)."""
    fields = {**_INTERNVIT_DEFAULTS, **{k: v for k, v in vision.items() if k in _INTERNVIT_DEFAULTS}}
    fields = {_INTERNVIT_RENAMES.get(k, k): v for k, v in fields.items()}
    return {**fields, "use_absolute_position_embeddings": True, "use_mean_pooling": True}


def _internvit_spec(vision: Any, where: str) -> VisionSpec:
    """VisionSpec of an InternVLVisionConfig: LayerNorm/RMSNorm, layer scale and CLS always present,
    (image/patch)^2 + 1 learned positions (transformers' InternVLVisionEmbeddings)."""
    image = _square(vision.image_size, "image_size", where)
    patch = _square(vision.patch_size, "patch_size", where)
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


def _internvit(config: dict[str, Any], where: str) -> _Recipe:
    """A standalone InternViT (model_type intern_vit_6b): transformers' InternVLVisionModel."""
    from transformers import InternVLVisionConfig, InternVLVisionModel

    hf = InternVLVisionConfig(**_internvit_fields(config))
    return _Recipe(lambda: InternVLVisionModel(hf), _internvit_rules(""), lambda _: {"vision": _internvit_spec(hf, where)})


def _internvl_recipe(hf: Any, architecture: str, where: str) -> _Recipe:
    """InternVLForConditionalGeneration; mlp1 = LayerNorm(C/r^2) -> Linear(., h) -> GELU -> Linear(h, h)."""
    from transformers import InternVLForConditionalGeneration

    def specs(_: Counts) -> dict[str, Spec]:
        merge = int(1 / hf.downsample_ratio) ** 2
        text = hf.text_config
        projector = ProjectorSpec(input_size=hf.vision_config.hidden_size, merge_factor=merge,
                                  hidden_size=text.hidden_size, output_size=text.hidden_size)
        # transformers 5 ties lm_head on the top-level flag (InternVLConfig default True)
        llm = _llm_spec(text, architecture, hf.tie_word_embeddings)
        return {"vision": _internvit_spec(hf.vision_config, where), "projector": projector, "llm": llm}

    rules = _internvit_rules("model.vision_tower.") + (
        (r"model\.multi_modal_projector\.", "projector", "projector"),
    ) + _llm_rules("model.language_model.")
    return _Recipe(lambda: InternVLForConditionalGeneration(hf), rules, specs)


def _internvl_chat(config: dict[str, Any], where: str) -> _Recipe:
    """OpenGVLab's remote-code InternVLChatModel, counted as transformers' InternVL port. The LM
    ties its head per llm_config.tie_word_embeddings (remote Qwen2/InternLM2 configs default False)."""
    from transformers import InternVLConfig

    for key in ("vision_config", "llm_config"):
        if not isinstance(config.get(key), dict):
            raise InputError(f"{where}: internvl_chat config without a {key} mapping")
    text, architecture = _text_fields(config["llm_config"], where)
    tie = bool(config["llm_config"].get("tie_word_embeddings", False))
    hf = InternVLConfig(vision_config=_internvit_fields(config["vision_config"]), text_config=text,
                        downsample_ratio=config.get("downsample_ratio", 0.5), tie_word_embeddings=tie)
    return _internvl_recipe(hf, architecture, where)


def _internvl_hf(config: dict[str, Any], where: str) -> _Recipe:
    """transformers' own InternVL format (OpenGVLab/InternVL3-*-hf)."""
    hf = _hf_config("internvl", config, where)
    architecture = hf.text_config.model_type
    if architecture not in ("qwen2", "qwen3", "llama"):
        raise InputError(f"{where}: text_config.model_type={architecture!r} is not importable (qwen2, qwen3, llama); {HAND_WRITTEN_FIELDS}")
    return _internvl_recipe(hf, architecture, where)


def _qwen_vl(config: dict[str, Any], where: str) -> _Recipe:
    """Qwen2.5-VL / Qwen3-VL. The ViT's ``merger`` (and Qwen3-VL's deepstack mergers) map to the
    ProjectorSpec; a 'tile' is 32x32 patches (patch*32 px), 256 LLM tokens after the 2x2 merge."""
    import transformers

    model_type = config["model_type"]
    hf = _hf_config(model_type, config, where)
    qwen3 = model_type == "qwen3_vl"
    model_class = transformers.Qwen3VLForConditionalGeneration if qwen3 else transformers.Qwen2_5_VLForConditionalGeneration

    def specs(_: Counts) -> dict[str, Spec]:
        v = hf.vision_config
        merge = v.spatial_merge_size**2
        vision = VisionSpec(
            architecture="qwen3_vl" if qwen3 else "qwen2_5_vl",
            num_layers=v.depth, hidden_size=v.hidden_size, num_heads=v.num_heads,
            intermediate_size=v.intermediate_size, patch_size=v.patch_size, image_size=v.patch_size * 32,
            temporal_patch_size=v.temporal_patch_size, norm="layernorm" if qwen3 else "rmsnorm",
            qkv_bias=True, gated_mlp=not qwen3, patch_bias=qwen3,
            num_position_embeddings=v.num_position_embeddings if qwen3 else 0,
            window_size=None if qwen3 else v.window_size,
            full_attention_layers=() if qwen3 else tuple(v.fullatt_block_indexes),
        )
        projector = ProjectorSpec(
            input_size=v.hidden_size, merge_factor=merge, hidden_size=v.hidden_size * merge,
            output_size=v.out_hidden_size, norm="layernorm" if qwen3 else "rmsnorm", norm_after_merge=False,
            deepstack_mergers=len(v.deepstack_visual_indexes) if qwen3 else 0,
        )
        llm = _llm_spec(hf.text_config, "qwen3" if qwen3 else "qwen2", hf.tie_word_embeddings)
        return {"vision": vision, "projector": projector, "llm": llm}

    rules = _qwen_vit_rules("model.visual.") + _llm_rules("model.language_model.")
    return _Recipe(lambda: model_class(hf), rules, specs)


def _sam2(config: dict[str, Any], where: str) -> _Recipe:
    """SAM2 (Sam2Model: image encoder, prompt encoder, mask decoder) or SAM2 video (Sam2VideoModel: +
    memory attention, memory encoder, object pointers). The trunk and neck are checked against the
    Hiera formulas; mask decoder, prompt encoder and memory counts are data (Sam2Spec) read off the model."""
    import transformers

    video = config["model_type"] == "sam2_video"
    hf = _hf_config(config["model_type"], config, where)
    backbone = hf.vision_config.backbone_config
    expected = [backbone.hidden_size * 2**i for i in range(4)]
    if list(backbone.embed_dim_per_stage) != expected or len(backbone.blocks_per_stage) != 4:
        raise SpecMismatchError(
            f"{where}: embed_dim_per_stage={list(backbone.embed_dim_per_stage)}, blocks_per_stage="
            f"{list(backbone.blocks_per_stage)}: Sam2Spec needs 4 stages whose widths double ({expected})"
        )

    def specs(measured: Counts) -> dict[str, Spec]:
        kinds = measured.get("sam2", {})
        return {"sam2": Sam2Spec(
            embed_dim=backbone.hidden_size, num_heads=backbone.num_attention_heads,
            stages=tuple(backbone.blocks_per_stage), global_attention_blocks=tuple(backbone.global_attention_blocks),
            window_spec=tuple(backbone.window_size_per_stage),
            window_pos_embed_bkg=tuple(backbone.window_positional_embedding_background_size),
            neck_dim=hf.vision_config.fpn_hidden_size, image_size=_square(backbone.image_size, "image_size", where),
            mask_decoder_params=kinds.get("mask_decoder", 0), prompt_encoder_params=kinds.get("prompt_encoder", 0),
            memory_params=kinds.get("memory", 0),
        )}

    model_class = transformers.Sam2VideoModel if video else transformers.Sam2Model
    return _Recipe(lambda: model_class(hf), SAM2_RULES, specs)


_RECIPES: dict[str, Callable[[dict[str, Any], str], _Recipe]] = {
    "qwen2": _causal_lm, "qwen3": _causal_lm, "llama": _causal_lm, "internlm2": _causal_lm,
    "intern_vit_6b": _internvit, "internvl_chat": _internvl_chat, "internvl": _internvl_hf,
    "qwen2_5_vl": _qwen_vl, "qwen3_vl": _qwen_vl, "sam2": _sam2, "sam2_video": _sam2,
}


def _recipe(config: dict[str, Any], where: str) -> _Recipe:
    model_type = config.get("model_type")
    if model_type not in _RECIPES:
        raise InputError(
            f"{where}: model_type={model_type!r} is not importable (known: {', '.join(_RECIPES)}); {HAND_WRITTEN_FIELDS}"
        )
    _transformers()
    return _RECIPES[model_type](config, where)


# ----------------------------------------------------------------------------- import
def build_model(config: ConfigSource) -> Any:
    """The transformers model a config describes, on the meta device (what import_config counts)."""
    data, where = _read(config)
    return _on_meta(_recipe(data, where).build)


def _compare(profile: Profile, measured: Counts, where: str, model_class: str) -> None:
    """Every module kind of every spec must equal the instantiated model's count; all differences
    are named in one message."""
    differences = []
    for slot, kinds in measured.items():
        formula = getattr(profile, slot).param_groups()
        for kind in [*formula, *(k for k in kinds if k not in formula)]:
            expected, actual = formula.get(kind, 0), kinds.get(kind, 0)
            if expected != actual:
                differences.append(f"{slot}.{kind}: formula {expected:,} != instantiated {actual:,} ({actual - expected:+,})")
    if differences:
        raise SpecMismatchError(
            f"{where}: memplan's spec formulas do not reproduce the instantiated {model_class}: "
            + "; ".join(differences)
            + " (the specs cannot express this architecture exactly; write the profile by hand or extend memplan/spec/profile.py)"
        )


def inspect_config(config: ConfigSource, name: str | None = None) -> ImportResult:
    """Import a config and keep the instantiated model's counts per slot and module kind."""
    data, where = _read(config)
    recipe = _recipe(data, where)
    model = _on_meta(recipe.build)
    measured = count_parameters(model, recipe.rules, where)
    try:
        specs = recipe.specs(measured)
        profile = Profile(
            name=name or default_name(config),
            description=f"{data.get('model_type')} model imported from {Path(where).name} ({type(model).__name__})",
            source=where,
            **specs,
        )
    except ValidationError as error:
        raise InputError(describe_validation_error(error, where)) from None
    _compare(profile, measured, where, type(model).__name__)
    return ImportResult(profile=profile, measured=measured, model_class=type(model).__name__)


def import_config(path_or_dict: ConfigSource, name: str | None = None) -> Profile:
    """A Profile from a Hugging Face config.json (path or mapping). Its formula counts equal those of
    the transformers model instantiated on meta from the same config, or SpecMismatchError says which
    module kind differs. Unknown model_type: InputError listing the fields a hand-written profile needs."""
    return inspect_config(path_or_dict, name).profile


# ----------------------------------------------------------------------------- YAML out
def _flow(value: Any) -> str:
    """One YAML value on one line (flow style, quoted where YAML needs it)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=2**31 - 1, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _fields(spec: Spec) -> dict[str, Any]:
    """A spec's non-default fields (``kind`` implied by the slot)."""
    return {k: v for k, v in spec.model_dump(mode="json", exclude_defaults=True).items() if k != "kind"}


def profile_yaml(profile: Profile) -> str:
    """The shipped style: name, description, source; one component as ``kind:`` plus block fields
    (profiles/components/), several as one flow mapping per slot (profiles/sa2va-*.yaml)."""
    lines = [f"{key}: {_flow(getattr(profile, key))}" for key in ("name", "description", "source")]
    slots = [(slot, getattr(profile, slot)) for slot in SLOT_ORDER if getattr(profile, slot) is not None]
    if len(slots) == 1:
        spec = slots[0][1]
        lines.append(f"kind: {spec.kind}")
        lines += [f"{key}: {_flow(value)}" for key, value in _fields(spec).items()]
    else:
        lines += [f"{slot}: {_flow(_fields(spec))}" for slot, spec in slots]
    return "\n".join(lines) + "\n"


def write_profile(profile: Profile, out_path: str | Path, overwrite: bool = False) -> Path:
    """Write ``profile`` as YAML to ``out_path``; an existing file is kept unless ``overwrite``."""
    path = Path(out_path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; pass --force to overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profile_yaml(profile), encoding="utf-8")
    except OSError as error:
        raise InputError(f"{path}: cannot write ({error.strerror})") from None
    return path


# ----------------------------------------------------------------------------- compose
ComponentSource = Union[str, Path, Mapping[str, Any], Spec, Profile]


def _component(value: ComponentSource, slot: str) -> Spec:
    """A slot's spec from a component name or path, a mapping (with optional ``from:``), a spec, or
    a Profile (its slot)."""
    if isinstance(value, Spec) and not isinstance(value, Profile):
        if getattr(value, "kind", slot) != slot:
            raise InputError(f"compose: {slot}={type(value).__name__}: a {slot} slot needs kind={slot!r}")
        return value
    if isinstance(value, Profile):
        spec = getattr(value, slot)
        if spec is None:
            raise InputError(f"compose: {slot}={value.name}: has no {slot} component")
        return spec
    document = {"name": "compose", "source": "compose", slot: str(value) if isinstance(value, Path) else dict(value) if isinstance(value, Mapping) else value}
    return getattr(profile_from_document(document, f"compose --{slot.replace('_', '-')}"), slot)


def _projector_template(vision: ComponentSource) -> ProjectorSpec | None:
    """The projector stored beside a vision tower (e.g. qwen3-vl-vit), if its source holds one."""
    if isinstance(vision, Profile):
        return vision.projector
    if isinstance(vision, (str, Path)):
        try:
            return _component(vision, "projector")
        except InputError:
            return None
    return None


def derive_projector(vision: VisionSpec, llm: LLMSpec, template: ProjectorSpec | None = None) -> ProjectorSpec:
    """A projector joining ``vision`` (width C) to ``llm`` (width h) after the 2x2 merge:
    InternVL mlp1 LayerNorm(4C) -> Linear(4C, h) -> GELU -> Linear(h, h);
    Qwen2.5-VL merger RMSNorm(C) -> Linear(4C, 4C) -> GELU -> Linear(4C, h);
    Qwen3-VL merger LayerNorm(C) -> same, plus deepstack mergers (3 in every Qwen3-VL config)."""
    c, h = vision.hidden_size, llm.hidden_size
    if vision.architecture == "internvit":
        return ProjectorSpec(input_size=c, merge_factor=4, hidden_size=h, output_size=h)
    deepstack = 0
    if vision.architecture == "qwen3_vl":
        deepstack = template.deepstack_mergers if template else 3
    return ProjectorSpec(
        input_size=c, merge_factor=4, hidden_size=4 * c, output_size=h, norm_after_merge=False,
        norm="rmsnorm" if vision.architecture == "qwen2_5_vl" else "layernorm", deepstack_mergers=deepstack,
    )


def compose(
    *,
    vision: ComponentSource | None = None,
    projector: ComponentSource | None = None,
    llm: ComponentSource | None = None,
    sam2: ComponentSource | None = None,
    seg_head: ComponentSource | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Profile:
    """A Sa2VA-style profile from component profiles. Not given: the projector is derived from the
    vision and LLM widths (derive_projector), the seg head as Linear(h, h) -> ReLU -> Linear(h,
    sam2.neck_dim). Widths that disagree fail with both numbers (Profile's validators)."""
    given = {"vision": vision, "projector": projector, "llm": llm, "sam2": sam2, "seg_head": seg_head}
    specs = {slot: _component(value, slot) for slot, value in given.items() if value is not None}
    if not specs:
        raise InputError("compose: give at least one of --vision, --llm, --sam2")
    if "projector" not in specs and "vision" in specs and "llm" in specs:
        specs["projector"] = derive_projector(specs["vision"], specs["llm"], _projector_template(vision))
    if "seg_head" not in specs and "sam2" in specs and "llm" in specs:
        specs["seg_head"] = SegHeadSpec(input_size=specs["llm"].hidden_size, output_size=specs["sam2"].neck_dim)
    labels = {slot: _label(value) for slot, value in given.items() if value is not None}
    document = {
        "name": name or "-".join(labels.values()),
        "description": description or "composed from " + ", ".join(f"{slot}={label}" for slot, label in labels.items()),
        "source": "memplan profile compose " + " ".join(f"--{slot.replace('_', '-')} {label}" for slot, label in labels.items()),
        **specs,
    }
    try:
        return Profile.model_validate(document)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, "compose")) from None


def _label(value: ComponentSource) -> str:
    if isinstance(value, Profile):
        return value.name
    if isinstance(value, (str, Path)):
        path = Path(value)
        return path.stem if path.suffix in (".yaml", ".yml", ".json") else str(value)
    return "inline"


def counts_table_rows(profile: Profile, measured: Counts | None = None) -> list[tuple[str, str, int, int | None]]:
    """(slot, module kind, formula params, instantiated params or None) for every spec's groups."""
    rows = []
    for slot in SLOT_ORDER:
        spec = getattr(profile, slot)
        if spec is None:
            continue
        kinds = (measured or {}).get(slot, {})
        for kind, count in spec.param_groups().items():
            rows.append((slot, kind, count, kinds.get(kind, 0) if measured is not None else None))
    return rows

