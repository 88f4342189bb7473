"""Loading profiles and plans from YAML/JSON, by name or path, with one-line errors.

Every failure raises ``InputError`` whose message names the field, the value and what is allowed;
the CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from memplan.spec.errors import (  # noqa: F401 (re-exported: loaders raise and word errors with them)
    InputError, check_finite, describe_validation_error, printable, shown,
)
from memplan.spec.calibration import CALIBRATION_SCHEMA, DEFAULT, Calibration
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile



def _package_root() -> Path:
    """memplan/ as installed (profiles and plans ship inside it as package data, pyproject.toml
    [tool.setuptools.package-data]), found through importlib.resources so a wheel, pipx or editable
    install resolves the same files; a non-filesystem loader falls back to this module's folder."""
    root = importlib.resources.files("memplan")
    return root if isinstance(root, Path) else Path(__file__).resolve().parents[1]


PACKAGE_ROOT = _package_root()
PROFILES_DIR = PACKAGE_ROOT / "profiles"
COMPONENTS_DIR = PROFILES_DIR / "components"
PLANS_DIR = PACKAGE_ROOT / "plans"
CALIBRATION_PATH = PROFILES_DIR / "calibration.yaml"

SLOT_BY_KIND = {"llm": "llm", "vision": "vision", "projector": "projector", "sam2": "sam2", "seg_head": "seg_head"}
COMPONENT_SLOTS = tuple(SLOT_BY_KIND.values())
NOT_PROFILES = ("calibration", "gpus", "fsdp_shapes")  # data files beside the profiles (memplan.calibration/1, memplan.gpus/1, scripts/fsdp_shapes.py)


# libyaml's safe loader when PyYAML has it: the same documents, 100x faster on pathological input
# (5,000 nested '[' take 1.7 s in the pure-Python loader) and a nesting limit instead of a RecursionError.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_file_bytes(path: Path, *, name: str, expected: str) -> bytes:
    """The bytes of a file; a path that is unusable, missing, a directory or unreadable is an
    InputError naming it (``name``) and what was ``expected`` there."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as error:  # a name too long, a NUL byte
        raise InputError(f"{name}: not a usable path ({getattr(error, 'strerror', None) or error})") from None
    if not exists:
        raise InputError(f"{name}: file not found")
    if is_dir:
        raise InputError(f"{name}: is a directory, expected {expected}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"{name}: cannot read ({error.strerror})") from None


def read_document(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping; every I/O, encoding or syntax problem becomes an InputError."""
    name = printable(path)
    raw = read_file_bytes(path, name=name, expected="a YAML or JSON file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{name}: not UTF-8 text (byte {error.start}: {error.object[error.start]:#04x})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=YAML_LOADER)
    except (yaml.YAMLError, json.JSONDecodeError, RecursionError, ValueError) as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        reason = str(getattr(error, "problem", None) or error).splitlines()[0]
        raise InputError(f"{name}: malformed {'JSON' if path.suffix == '.json' else 'YAML'}{at}: {reason}") from None
    if data is None:
        raise InputError(f"{name}: empty document, expected a mapping of keys (key: value)")
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(data), type(data).__name__)
        raise InputError(f"{name}: top level is {kind} ({shown(data)}), expected a mapping of keys (key: value)")
    return data


def _profile_files() -> dict[str, Path]:
    files = {p.stem: p for p in sorted(COMPONENTS_DIR.glob("*.yaml"))}
    files.update({p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml")) if p.stem not in NOT_PROFILES})
    return files


def profile_names() -> list[str]:
    return sorted(_profile_files())


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a NUL byte: read_document names the problem
        return False


def _resolve(name_or_path: str, kind: str = "profile", field: str = "model") -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml", ".json") or _exists(candidate):
        return candidate
    files = _profile_files()
    if name_or_path in files:
        return files[name_or_path]
    from memplan.spec.aliases import profile_aliases

    alias = profile_aliases().get(name_or_path.strip().lower())
    if alias is not None:
        return files[alias]
    close = difflib.get_close_matches(name_or_path, list(files), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else f"; see `memplan profiles` ({len(files)} known)"
    raise InputError(f"{field}={shown(name_or_path)}: unknown {kind}{hint}")


def _component_mapping(value: Any, slot: str, *, where: str, depth: int) -> dict[str, Any]:
    """A component slot holds a name (of a component profile), or a mapping with optional 'from'."""
    if isinstance(value, str):
        value = {"from": value}
    if not isinstance(value, dict):
        raise InputError(f"{where}: {slot}={shown(value)}: expected a component name or a mapping")
    value = dict(value)
    base = value.pop("from", None)
    if base is not None and not isinstance(base, str):
        raise InputError(f"{where}: {slot}.from={shown(base)}: expected a component name or path (a string)")
    if base is not None:
        if depth > 4:
            raise InputError(f"{where}: {slot}.from={base!r}: references nest deeper than 4")
        base_doc = read_document(_resolve(base, "component", f"{where}: {slot}"))
        base_kind = base_doc.get("kind")
        if base_kind is not None and base_kind != slot:
            raise InputError(f"{where}: {slot}={shown(base)} is a {shown(base_kind)} component; "
                             f"a {slot} slot needs kind={slot!r}")
        base_fields = _component_fields(base_doc, slot, where=str(base), depth=depth + 1)
        value = {**base_fields, **value}
    value.setdefault("kind", slot)
    if value["kind"] != slot:
        raise InputError(f"{where}: {slot}.kind={shown(value['kind'])}: a {slot} slot needs kind={slot!r}")
    return value


def _component_fields(document: dict[str, Any], slot: str, *, where: str, depth: int) -> dict[str, Any]:
    """Fields of a component profile file, without its name/source/description."""
    kind = document.get("kind")
    if kind is None:  # a whole-model profile used as a component source: take its slot
        if document.get(slot) is None:
            raise InputError(f"{where}: has no {slot} component")
        return _component_mapping(document[slot], slot, where=where, depth=depth)
    fields = {k: v for k, v in document.items() if k not in ("name", "source", "description", "aliases")}
    return _component_mapping(fields, slot, where=where, depth=depth)


def profile_from_document(document: dict[str, Any], where: str) -> Profile:
    """Build a Profile from a model document or a single-component document."""
    if not isinstance(document, dict):
        raise InputError(f"{where}: top level is {type(document).__name__} ({shown(document)}), "
                         "expected a mapping of keys (key: value)")
    document = dict(document)
    check_finite(document, where)
    aliases = document.pop("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise InputError(f"{where}: aliases={shown(aliases)}: expected a list of names (Hugging Face repo ids)")
    kind = document.get("kind")
    if kind is not None:
        if not isinstance(kind, str) or kind not in SLOT_BY_KIND:
            raise InputError(f"{where}: kind={shown(kind)}: expected one of {', '.join(SLOT_BY_KIND)}")
        slot = SLOT_BY_KIND[kind]
        head = {k: document.pop(k) for k in ("name", "source", "description") if k in document}
        document = {**head, slot: document}
    for slot in COMPONENT_SLOTS:
        if slot in document and document[slot] is not None:
            document[slot] = _component_mapping(document[slot], slot, where=where, depth=0)
    document.setdefault("name", Path(where).stem)
    try:
        profile = Profile.model_validate(document)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, where, Profile)) from None
    check_sam2_shape(profile, where)
    return profile


def check_sam2_shape(profile: Profile, where: str) -> None:
    """Hiera's per-stage block counts and window sizes must be small positive integers: the parameter
    count loops over the blocks (a count of 10**19 would never finish) and a negative one is meaningless."""
    sam2 = profile.sam2
    if sam2 is None:
        return
    for field, values, low in (("stages", sam2.stages, 1), ("window_spec", sam2.window_spec, 1),
                               ("window_pos_embed_bkg", sam2.window_pos_embed_bkg, 1),
                               ("global_attention_blocks", sam2.global_attention_blocks, 0)):
        if any(not low <= value <= 1024 for value in values):
            raise InputError(f"{where}: sam2.{field}={shown(list(values))}: each must be an integer in {low}..1024")
    for field in ("neck_dim", "image_size"):
        value = getattr(sam2, field)
        if not 0 < value <= 1 << 20:
            raise InputError(f"{where}: sam2.{field}={shown(value)}: must be a positive integer (at most 2**20)")


@lru_cache(maxsize=256)
def load_profile(name_or_path: str) -> Profile:
    """A profile by shipped name (``sa2va-4b``, ``qwen2.5-0.5b``) or by file path."""
    path = _resolve(name_or_path)
    return profile_from_document(read_document(path), printable(path))


DEEPSPEED_ONLY = (
    "reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients",
    "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold", "stage3_max_live_parameters",
    "stage3_max_reuse_distance", "zero3_init", "zero_hpz_partition_size",
)
REMOVED_IN_DEEPSPEED = ("mics_shard_size", "mics_hierarchical_params_gather")  # deepspeed/runtime/config.py


def check_engine_options(document: dict[str, Any], where: str) -> None:
    """DeepSpeed-only engine knobs set (to other than their defaults) on a plain PyTorch plan are refused:
    the run would silently ignore them. (zero_stage and offload_* are checked by the Engine model.)"""
    from memplan.spec.plan import Engine

    engine = document.get("engine")
    if not isinstance(engine, dict):
        return
    for key in REMOVED_IN_DEEPSPEED:
        if key in engine:
            raise InputError(
                f"{where}: engine.{key}={shown(engine[key])}: MiCS was removed in DeepSpeed 0.19 "
                "(deepspeed/runtime/config.py, _REMOVED_ZERO_CONFIG_KEYS); use engine.zero_hpz_partition_size "
                "or engine.kind=fsdp2 with fsdp.hsdp"
            )
    kind = engine.get("kind")
    if kind not in ("pytorch", "fsdp2"):
        return
    for key in DEEPSPEED_ONLY:
        if key in engine and engine[key] != Engine.model_fields[key].default:
            raise InputError(
                f"{where}: engine.{key}={shown(engine[key])}: a DeepSpeed option, but engine.kind={kind} "
                "(remove it, or use engine.kind=deepspeed)"
            )


def plan_from_document(document: dict[str, Any], where: str) -> Plan:
    """A validated Plan; NaN/inf, DeepSpeed knobs on a PyTorch plan and every field error are InputErrors."""
    if not isinstance(document, dict):
        raise InputError(f"{where}: top level is {type(document).__name__} ({shown(document)}), "
                         "expected a mapping of keys (key: value)")
    check_finite(document, where)
    check_engine_options(document, where)
    try:
        return Plan.model_validate(document)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, where, Plan)) from None


def plan_names() -> list[str]:
    """Shipped plans by name: plans/NAME.yaml and plans/DIR/NAME.yaml (as DIR/NAME)."""
    return sorted(p.relative_to(PLANS_DIR).with_suffix("").as_posix() for p in PLANS_DIR.rglob("*.yaml"))


def plan_path(path: str | Path) -> Path:
    """A plan file by path, or a shipped plan by name (plans/NAME.yaml); unknown names list the closest."""
    path = Path(path)
    if _exists(path):
        return path
    if path.parts[:1] == ("plans",) and _exists(PLANS_DIR.joinpath(*path.parts[1:])):
        return PLANS_DIR.joinpath(*path.parts[1:])  # plans/seed/plan-a.yaml as the docs write it
    shipped = PLANS_DIR / f"{path}.yaml"
    if path.suffix not in (".yaml", ".yml", ".json") and _exists(shipped):
        return shipped
    if path.suffix not in (".yaml", ".yml", ".json"):
        names = plan_names()
        close = difflib.get_close_matches(str(path), names, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"shipped plans: {', '.join(names)}"
        raise InputError(f"plan={shown(str(path))}: no such file or shipped plan; {hint}")
    return path  # read_document says what is wrong with it


def read_plan_document(path: Path) -> dict[str, Any]:
    """A plan file's mapping with its ``from:`` chain merged in; a DeepSpeed JSON config becomes the
    engine section of a plan on the official recipe (memplan.spec.inherit)."""
    from memplan.spec import inherit

    document = read_document(path)
    if inherit.is_deepspeed_config(document, path):
        document = inherit.plan_from_deepspeed(document, printable(path), InputError)
    document.setdefault("name", path.stem)
    return inherit.resolve_base(document, path, read=read_document, locate=plan_path, fail=InputError,
                                deepspeed_only=DEEPSPEED_ONLY)


def load_plan(path: str | Path) -> Plan:
    path = plan_path(path)
    return plan_from_document(read_plan_document(path), printable(path))


def plan_document(path: str | Path | None) -> dict[str, Any]:
    """The raw mapping of a plan file, inheritance resolved (for layering CLI flags on top before validation)."""
    if path is None:
        return {}
    return read_plan_document(plan_path(path))


def load_calibration(path: str | Path | None = None):
    """The calibration file (default profiles/calibration.yaml, else built-in defaults).

    A file of another schema is refused rather than read into wrong numbers."""

    explicit = path is not None
    path = Path(path) if explicit else CALIBRATION_PATH
    if not _exists(path) and not explicit:
        return DEFAULT
    document = read_document(path)
    if "schema" not in document:
        raise InputError(f"{printable(path)}: schema missing: expected schema: {CALIBRATION_SCHEMA} "
                         "(write it with `memplan calibrate`)")
    schema = document["schema"]
    if schema != CALIBRATION_SCHEMA:
        raise InputError(f"{printable(path)}: schema={shown(schema)}: expected {CALIBRATION_SCHEMA!r} "
                         "(a file of another version or tool; re-run `memplan calibrate`)")
    check_finite(document, printable(path))
    try:
        return Calibration.model_validate(document)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, printable(path), Calibration)) from None
