"""Plan a model memplan does not ship: import a Hugging Face ``config.json``, or compose components.

- ``families``: one adapter per architecture family (LLM, InternViT, Qwen-VL ViT, SAM2), each holding
  both directions: HF config -> memplan spec (import) and spec -> HF config (the probe's real model);
- ``importing``: ``import_config`` / ``inspect_config``, checked against the model built on meta;
- ``compose``: a Sa2VA-style profile from component profiles;
- ``yaml_out``: the profile as YAML in the style of memplan/profiles/.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

from memplan.integrations.huggingface.base import SpecMismatchError
from memplan.integrations.huggingface.compose import compose, derive_projector
from memplan.integrations.huggingface.importing import (
    ImportResult,
    build_model,
    component_counts,
    count_parameters,
    counts_table_rows,
    default_name,
    import_config,
    inspect_config,
)
from memplan.integrations.huggingface.yaml_out import profile_yaml, write_profile

__all__ = [
    "ImportResult", "SpecMismatchError", "build_model", "component_counts", "compose", "count_parameters",
    "counts_table_rows", "default_name", "derive_projector", "import_config", "inspect_config", "profile_yaml",
    "write_profile",
]
