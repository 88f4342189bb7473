"""Compose a Sa2VA-style profile from component profiles (``memplan profile compose``).

The projector, when not given, is derived from the vision and LLM widths (``derive_projector``), the
seg head as Linear(h, h) -> ReLU -> Linear(h, sam2.neck_dim) (Sa2VA's text_hidden_fcs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Union

from pydantic import ValidationError

from memplan.spec.loading import InputError, describe_validation_error, profile_from_document
from memplan.spec.profile import LLMSpec, Profile, ProjectorSpec, SegHeadSpec, Spec, VisionSpec

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
