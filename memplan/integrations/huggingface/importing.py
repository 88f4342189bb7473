"""Import a Hugging Face ``config.json`` as a memplan profile, checked against the real model.

``import_config`` maps a config's fields onto the specs of memplan.spec.profile (through the family
adapters in ``families``), builds the matching transformers model on the meta device (shapes only:
no weights, no download) and checks that the spec formulas (``Profile.component_params()`` and each
spec's ``param_groups()``) equal the instantiated model's parameter counts exactly, per component
and per module kind. Where a spec cannot express the architecture, the import fails and names the
module kind that differs.

Supported ``model_type`` values (transformers 5.x classes in brackets):
  qwen2, qwen3, llama [*ForCausalLM]; internlm2 (remote code; counted as the Llama it is equivalent
  to: fused wqkv = q,k,v; w1/w3/w2 = gate/up/down); intern_vit_6b (InternViT, remote code)
  [InternVLVisionModel]; internvl_chat (remote code) and internvl [InternVLForConditionalGeneration];
  qwen2_5_vl, qwen3_vl [*ForConditionalGeneration]; sam2 [Sam2Model], sam2_video [Sam2VideoModel].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from pydantic import ValidationError

from memplan.integrations.huggingface.base import HAND_WRITTEN_FIELDS, SLOT_ORDER, Counts, Recipe, Rule, SpecMismatchError
from memplan.integrations.huggingface.families import RECIPES
from memplan.spec.loading import InputError, describe_validation_error, read_document
from memplan.spec.profile import Profile

ConfigSource = Union[str, Path, Mapping[str, Any]]


@dataclass(frozen=True)
class ImportResult:
    """An imported profile and the parameter counts of the model instantiated from the same config."""

    profile: Profile
    measured: Counts  # slot -> module kind -> parameters of the transformers model on meta
    model_class: str


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


def _transformers() -> Any:
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


def _recipe(config: dict[str, Any], where: str) -> Recipe:
    model_type = config.get("model_type")
    if model_type not in RECIPES:
        raise InputError(
            f"{where}: model_type={model_type!r} is not importable (known: {', '.join(RECIPES)}); {HAND_WRITTEN_FIELDS}"
        )
    _transformers()
    return RECIPES[model_type](config, where)


def build_model(config: ConfigSource) -> Any:
    """The transformers model a config describes, on the meta device (what import_config counts)."""
    data, where = _read(config)
    return _on_meta(_recipe(data, where).build)


def _compare(profile: Profile, measured: Counts, *, where: str, model_class: str) -> None:
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
    _compare(profile, measured, where=where, model_class=type(model).__name__)
    return ImportResult(profile=profile, measured=measured, model_class=type(model).__name__)


def import_config(path_or_dict: ConfigSource, name: str | None = None) -> Profile:
    """A Profile from a Hugging Face config.json (path or mapping). Its formula counts equal those of
    the transformers model instantiated on meta from the same config, or SpecMismatchError says which
    module kind differs. Unknown model_type: InputError listing the fields a hand-written profile needs."""
    return inspect_config(path_or_dict, name).profile


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
