"""The dim-0 census of the components (memplan/profiles/fsdp_shapes.yaml), read without torch.

FSDP2 pads every parameter's dim 0 to a multiple of the shard group (memplan.estimate.fsdp), so its
memory depends on each parameter's (dim 0, rest). scripts/fsdp_shapes.py lists them per component
from the modules the probe builds; this module finds a profile component's entry by its spec's
fields (census_key), so a profile read back from a probe record finds it too, and a spec with other
widths finds none.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from memplan.spec.loading import PROFILES_DIR
from memplan.spec.profile import Profile

CENSUS_PATH = Path(PROFILES_DIR) / "fsdp_shapes.yaml"  # not a profile: loading.NOT_PROFILES
Shape = tuple[int, int, int]  # (dim 0, elements per dim-0 row, how many parameters have it)
Census = dict[str, tuple[Shape, ...]]
_NOT_SHAPES = {"llm": {"vocab_size", "tie_word_embeddings", "num_layers"}}  # embeddings: from the spec


def _key(slot: str, spec: Any, projector: Any) -> str:
    fields = spec.model_dump(mode="json", exclude=_NOT_SHAPES.get(slot, set()))
    document = {"slot": slot, "spec": fields}
    if projector is not None:
        document["projector"] = projector.model_dump(mode="json")
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _merger(profile: Profile, slot: str) -> Any:
    """The projector spec a Qwen-VL tower builds inside itself (part of its census), else None."""
    vision = profile.vision
    if slot == "vision" and vision is not None and vision.architecture != "internvit":
        return profile.projector
    return None


def census_key(profile: Profile, slot: str) -> str | None:
    """The key of one component's census entry: its slot and spec fields (those that set shapes)."""
    spec = getattr(profile, slot)
    return None if spec is None else _key(slot, spec, _merger(profile, slot))


@lru_cache(maxsize=1)
def _entries() -> dict[str, Census]:
    document = yaml.safe_load(CENSUS_PATH.read_text()) if CENSUS_PATH.exists() else {}
    return {entry["key"]: {group: tuple(tuple(s) for s in shapes) for group, shapes in entry["groups"].items()}
            for entry in (document or {}).get("entries", [])}


@lru_cache(maxsize=4096)
def _census(slot: str, spec: Any, projector: Any) -> Census | None:
    return _entries().get(_key(slot, spec, projector))


def census(profile: Profile, slot: str) -> Census | None:
    """The groups of (d0, rest, count) of one component (``llm``, ``vision``, ``projector``, ``sam2``,
    ``seg_head``), or None when the census has no entry for its spec."""
    spec = getattr(profile, slot)
    return None if spec is None else _census(slot, spec, _merger(profile, slot))
