"""Engines and hubs memplan speaks to: DeepSpeed configs, Hugging Face configs (import, compose)."""

from pathlib import Path


def plan_path_for(config: Path) -> Path:
    """Where an emitted config's plan goes, beside it: ds.json -> ds.plan.yaml, fsdp.yaml -> fsdp.plan.yaml."""
    return config.with_name(config.stem + ".plan.yaml")
