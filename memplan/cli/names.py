"""What ``-m/--model`` accepts: a shipped profile's name or alias (a Hugging Face repo id such as
ByteDance/Sa2VA-4B, case-insensitive: memplan.spec.loading.profile_aliases), a profile YAML, or a
Hugging Face ``config.json`` (or the folder holding one), imported on the fly the way
``memplan profile import`` does (memplan.integrations.huggingface.import_config: transformers
builds the model on the meta device and its parameter counts must equal the profile's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memplan.spec.flags import DEFAULT_MODEL
from memplan.spec.loading import load_profile, printable, read_document
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

PROFILE_KEYS = ("kind", "llm", "vision", "sam2", "projector", "seg_head", "source")


def is_hf_config(document: dict[str, Any]) -> bool:
    """A Hugging Face config (``model_type`` and none of a memplan profile's keys)."""
    return "model_type" in document and not any(key in document for key in PROFILE_KEYS)


def _config_file(name_or_path: str) -> Path | None:
    path = Path(name_or_path)
    try:
        if path.is_dir() and (path / "config.json").is_file():
            return path / "config.json"
        if path.suffix == ".json" and path.is_file():
            return path
    except (OSError, ValueError):
        return None
    return None


def import_on_the_fly(config: Path) -> Profile:
    """The profile of a Hugging Face config.json (torch and transformers needed; the hint says how)."""
    from memplan.cli.profile_cmd import check_config_shapes, with_transformers
    from memplan.integrations.huggingface import import_config

    check_config_shapes(read_document(config), printable(config))
    return with_transformers(printable(config), lambda: import_config(config))


def load_model(name_or_path: str) -> Profile:
    """A Profile from whatever -m was given (see the module docstring)."""
    config = _config_file(name_or_path)
    if config is not None and is_hf_config(read_document(config)):
        return import_on_the_fly(config)
    return load_profile(name_or_path)


def resolve_profile(name: str | None, plan: Plan | None = None) -> Profile:
    """--model wins, then the plan's own model, then the documented default (sa2va-4b); a name, an
    alias (ByteDance/Sa2VA-4B), a profile YAML or a Hugging Face config.json (load_model)."""
    return load_model(name or (plan.model if plan else None) or DEFAULT_MODEL)
