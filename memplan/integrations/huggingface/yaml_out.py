"""Write a profile as YAML in the style of memplan/profiles/ (what ``memplan profile import`` writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from memplan.integrations.huggingface.base import SLOT_ORDER
from memplan.spec.loading import InputError
from memplan.spec.profile import Profile, Spec


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
