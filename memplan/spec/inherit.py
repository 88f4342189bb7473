"""Plan documents that build on others: ``from: NAME`` (deep merge) and DeepSpeed JSON as a plan.

- ``from: sa2va-official`` (a shipped plan name, a sibling file's stem such as ``baseline``, or a
  path relative to the plan file) makes the document a set of changes to that plan: mappings merge
  key by key, every other value (lists included) replaces the base's. A child whose
  ``engine.kind`` is ``pytorch`` drops the base's DeepSpeed-only knobs.
- A DeepSpeed JSON config (a ``.json`` file with ``zero_optimization``,
  ``train_micro_batch_size_per_gpu`` ... and none of a plan's sections) is read as the engine section
  of a plan on the official recipe (DeepSpeed 0.19's keys: deepspeed/runtime/zero/config.py,
  deepspeed/runtime/zero/offload_config.py; ``"auto"`` values, filled in by the HF Trainer or xtuner,
  leave the recipe's value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

MAX_DEPTH = 8
BASE_KEY = "from"
DEFAULT_BASE = "sa2va-official"
PLAN_KEYS = ("name", "description", "model", "mode", "hardware", "engine", "precision", "optimizer", "attention",
             "stack", "components", "inputs", BASE_KEY)
DEEPSPEED_MARKERS = ("zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size",
                     "gradient_accumulation_steps", "bf16", "fp16", "zero_allow_untested_optimizer")
ZERO_KEYS = ("reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients",
             "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold", "stage3_max_live_parameters",
             "stage3_max_reuse_distance")
RESET_FOR_PYTORCH = {"zero_stage": 0, "offload_optimizer": "none", "offload_params": "none"}


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _engine_for_child(base: dict[str, Any], child: dict[str, Any], deepspeed_only: tuple[str, ...]) -> dict[str, Any]:
    """A pytorch child of a DeepSpeed base keeps none of the base's DeepSpeed knobs; an fsdp2 child of
    another engine keeps only the base's fsdp section (as --engine fsdp2 does, memplan.spec.flags)."""
    engine, child_engine = base.get("engine"), child.get("engine")
    if not (isinstance(engine, dict) and isinstance(child_engine, dict)):
        return base
    if child_engine.get("kind") == "fsdp2" and engine.get("kind") != "fsdp2":
        return {**base, "engine": {"fsdp": engine["fsdp"]} if "fsdp" in engine else {}}
    if child_engine.get("kind") != "pytorch" or engine.get("kind") == "pytorch":
        return base
    kept = {k: v for k, v in engine.items() if k not in deepspeed_only}
    return {**base, "engine": {**kept, **RESET_FOR_PYTORCH}}


def is_deepspeed_config(document: dict[str, Any], path: Path) -> bool:
    """A DeepSpeed JSON config rather than a plan: DeepSpeed's keys and none of a plan's sections."""
    if path.suffix != ".json" or any(key in document for key in PLAN_KEYS if key != "optimizer"):
        return False
    return any(key in document for key in DEEPSPEED_MARKERS)


def _given(value: Any) -> bool:
    return value is not None and value != "auto"


def _enabled(section: Any, where: str, *, field: str, fail: Callable[[str], Exception]) -> bool | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise fail(f"{where}: {field}={section!r}: expected a mapping such as {{\"enabled\": true}}")
    value = section.get("enabled")
    if not _given(value):
        return None
    if not isinstance(value, bool):
        raise fail(f"{where}: {field}.enabled={value!r}: expected true, false or \"auto\"")
    return value


def plan_from_deepspeed(config: dict[str, Any], where: str, fail: Callable[[str], Exception]) -> dict[str, Any]:
    """A plan document: the official recipe with this DeepSpeed config as its engine.

    stage (default 0), offload_optimizer/offload_param devices, buckets, overlap and the stage-3 knobs
    become ``engine``; train_micro_batch_size_per_gpu becomes ``inputs.micro_batch``; bf16/fp16
    ``enabled`` become ``precision.compute`` (both off: fp32)."""
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise fail(f"{where}: zero_optimization={zero!r}: expected a mapping")
    engine: dict[str, Any] = {"kind": "deepspeed", "zero_stage": zero.get("stage", 0)}
    for key, target in (("offload_optimizer", "offload_optimizer"), ("offload_param", "offload_params")):
        section = zero.get(key)
        if section is None:
            engine[target] = "none"
        elif isinstance(section, dict):
            engine[target] = section.get("device", "none")
        else:
            raise fail(f"{where}: zero_optimization.{key}={section!r}: expected a mapping with a device")
    engine.update({key: zero[key] for key in ZERO_KEYS if _given(zero.get(key))})
    document: dict[str, Any] = {BASE_KEY: DEFAULT_BASE, "name": Path(where).stem,
                                "description": f"the official recipe with the DeepSpeed config {Path(where).name}",
                                "engine": engine}
    micro_batch = config.get("train_micro_batch_size_per_gpu")
    if _given(micro_batch):
        document["inputs"] = {"micro_batch": micro_batch}
    bf16 = _enabled(config.get("bf16"), where, field="bf16", fail=fail)
    fp16 = _enabled(config.get("fp16"), where, field="fp16", fail=fail)
    if bf16 or fp16:
        document["precision"] = {"compute": "bf16" if bf16 else "fp16"}
    elif bf16 is False and fp16 is False:  # both stated off: DeepSpeed trains in fp32
        document["precision"] = {"compute": "fp32"}
    return document


def locate_base(base: str, path: Path, locate: Callable[[str], Path]) -> Path:
    """A ``from:`` value's file: beside ``path`` first (``from: baseline`` in plans/seed/), else ``locate``."""
    sibling = path.parent / (base if base.endswith((".yaml", ".yml", ".json")) else f"{base}.yaml")
    return sibling if sibling.is_file() else locate(base)


def states(path: Path, section: str, key: str, *, read: Callable[[Path], dict[str, Any]],
           locate: Callable[[str], Path]) -> bool:
    """Whether the user's plan file, or a file it inherits from other than the default recipe, sets
    ``section.key`` (the recipe's own hardware describes the official node, not the user's)."""
    for _ in range(MAX_DEPTH + 1):
        document = read(path)
        if is_deepspeed_config(document, path):
            return False
        if section in document and (not isinstance(document[section], dict) or key in document[section]):
            return True  # set (or malformed: validation names it)
        base = document.get(BASE_KEY)
        if not isinstance(base, str) or base == DEFAULT_BASE:
            return False
        path = locate_base(base, path, locate)
    return False


def resolve_base(document: dict[str, Any], path: Path, *, read: Callable[[Path], dict[str, Any]],
                 locate: Callable[[str], Path], fail: Callable[[str], Exception], deepspeed_only: tuple[str, ...],
                 chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The document with its ``from:`` chain merged in (base first), at most MAX_DEPTH deep, no cycles.

    ``read`` reads a file into a mapping, ``locate`` finds a shipped plan by name, ``fail`` makes the
    InputError; a base is looked for beside ``path`` first (``from: baseline`` in plans/seed/)."""
    if BASE_KEY not in document:
        return document
    document = dict(document)
    base = document.pop(BASE_KEY)
    where = str(path)
    if not isinstance(base, str) or not base.strip():
        raise fail(f"{where}: from={base!r}: expected the name or path of a plan to inherit (e.g. {DEFAULT_BASE})")
    if len(chain) >= MAX_DEPTH:
        raise fail(f"{where}: from={base!r}: plans inherit deeper than {MAX_DEPTH}")
    base_path = locate_base(base, path, locate)
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        names = " -> ".join(p.stem for p in (*chain, path, base_path))
        raise fail(f"{where}: from={base!r}: inherits from itself ({names})")
    base_document = resolve_base(read(base_path), base_path, read=read, locate=locate, fail=fail,
                                 deepspeed_only=deepspeed_only, chain=(*chain, path))
    base_document.pop("name", None)  # the child is its own plan; it inherits the description unless it sets one
    return deep_merge(_engine_for_child(base_document, document, deepspeed_only), document)
