"""Loading profiles and plans from YAML/JSON, by name or path, with one-line errors.

Every failure raises ``InputError`` whose message names the field, the value and what is allowed;
the CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from memplan.plan import Plan
from memplan.profile import Profile

PACKAGE_ROOT = Path(__file__).resolve().parent
PROFILES_DIR = PACKAGE_ROOT.parent / "profiles"
COMPONENTS_DIR = PROFILES_DIR / "components"
PLANS_DIR = PACKAGE_ROOT.parent / "plans"

SLOT_BY_KIND = {"llm": "llm", "vision": "vision", "projector": "projector", "sam2": "sam2", "seg_head": "seg_head"}
COMPONENT_SLOTS = tuple(SLOT_BY_KIND.values())


class InputError(ValueError):
    """Bad user input: a one-line message naming the field, the value and what is allowed."""


def describe_validation_error(error: ValidationError, where: str) -> str:
    """Turn pydantic's multi-line report into one line: 'where: field=value: why'."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key '{field}' (not a field of this section)"
    if first["type"] == "missing":
        return f"{where}: missing required field '{field}'"
    value = first.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    prefix = f"{where}: {field}={shown}: " if first["loc"] else f"{where}: "
    extra = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{prefix}{message}{extra}"


def read_document(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping; every I/O, encoding or syntax problem becomes an InputError."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a YAML or JSON file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start}: {error.object[error.start]:#04x})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, RecursionError, ValueError) as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        reason = str(getattr(error, "problem", None) or error).splitlines()[0]
        raise InputError(f"{path}: malformed {'JSON' if path.suffix == '.json' else 'YAML'}{at}: {reason}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _profile_files() -> dict[str, Path]:
    files = {p.stem: p for p in sorted(COMPONENTS_DIR.glob("*.yaml"))}
    files.update({p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml")) if p.stem != "calibration"})
    return files


def profile_names() -> list[str]:
    return sorted(_profile_files())


def _resolve(name_or_path: str, kind: str = "profile") -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml", ".json") or candidate.exists():
        return candidate
    files = _profile_files()
    if name_or_path in files:
        return files[name_or_path]
    close = difflib.get_close_matches(name_or_path, list(files), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else f"; see `memplan profiles` ({len(files)} known)"
    raise InputError(f"model={name_or_path!r}: unknown {kind}{hint}")


def _component_mapping(value: Any, slot: str, where: str, depth: int) -> dict[str, Any]:
    """A component slot holds a name (of a component profile), or a mapping with optional 'from'."""
    if isinstance(value, str):
        value = {"from": value}
    if not isinstance(value, dict):
        raise InputError(f"{where}: {slot}={value!r}: expected a component name or a mapping")
    value = dict(value)
    base = value.pop("from", None)
    if base is not None:
        if depth > 4:
            raise InputError(f"{where}: {slot}.from={base!r}: references nest deeper than 4")
        base_doc = read_document(_resolve(str(base), "component"))
        base_fields = _component_fields(base_doc, slot, str(base), depth + 1)
        value = {**base_fields, **value}
    value.setdefault("kind", slot)
    if value["kind"] != slot:
        raise InputError(f"{where}: {slot}.kind={value['kind']!r}: a {slot} slot needs kind={slot!r}")
    return value


def _component_fields(document: dict[str, Any], slot: str, where: str, depth: int) -> dict[str, Any]:
    """Fields of a component profile file, without its name/source/description."""
    kind = document.get("kind")
    if kind is None:  # a whole-model profile used as a component source: take its slot
        if slot not in document:
            raise InputError(f"{where}: has no {slot} component")
        return _component_mapping(document[slot], slot, where, depth)
    fields = {k: v for k, v in document.items() if k not in ("name", "source", "description")}
    return _component_mapping(fields, slot, where, depth)


def profile_from_document(document: dict[str, Any], where: str) -> Profile:
    """Build a Profile from a model document or a single-component document."""
    document = dict(document)
    kind = document.get("kind")
    if kind is not None:
        if kind not in SLOT_BY_KIND:
            raise InputError(f"{where}: kind={kind!r}: expected one of {', '.join(SLOT_BY_KIND)}")
        slot = SLOT_BY_KIND[kind]
        head = {k: document.pop(k) for k in ("name", "source", "description") if k in document}
        document = {**head, slot: document}
    for slot in COMPONENT_SLOTS:
        if slot in document and document[slot] is not None:
            document[slot] = _component_mapping(document[slot], slot, where, 0)
    document.setdefault("name", Path(where).stem)
    try:
        return Profile.model_validate(document)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, where)) from None


@lru_cache(maxsize=256)
def load_profile(name_or_path: str) -> Profile:
    """A profile by shipped name (``sa2va-4b``, ``qwen2.5-0.5b``) or by file path."""
    path = _resolve(name_or_path)
    return profile_from_document(read_document(path), str(path))


def plan_from_document(document: dict[str, Any], where: str) -> Plan:
    try:
        return Plan.model_validate(document)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, where)) from None


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.exists() and (PLANS_DIR / f"{path}.yaml").exists():
        path = PLANS_DIR / f"{path}.yaml"
    document = read_document(path)
    document.setdefault("name", path.stem)
    return plan_from_document(document, str(path))


def plan_document(path: str | Path | None) -> dict[str, Any]:
    """The raw mapping of a plan file (for layering CLI flags on top before validation)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists() and (PLANS_DIR / f"{path}.yaml").exists():
        path = PLANS_DIR / f"{path}.yaml"
    document = read_document(path)
    document.setdefault("name", path.stem)
    return document


def load_calibration(path: str | Path | None = None):
    """The calibration file (default profiles/calibration.yaml, else built-in defaults).

    A file of another schema is refused rather than read into wrong numbers."""
    from memplan.estimators.overhead import CALIBRATION_SCHEMA, DEFAULT, Calibration, calibration_path

    explicit = path is not None
    path = Path(path) if explicit else calibration_path()
    if not path.exists():
        if explicit:
            raise InputError(f"{path}: calibration file not found")
        return DEFAULT
    document = read_document(path)
    schema = document.get("schema")
    if schema != CALIBRATION_SCHEMA:
        raise InputError(f"{path}: schema={schema!r}: expected {CALIBRATION_SCHEMA!r} (re-run `memplan calibrate`)")
    try:
        return Calibration.model_validate(document)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, str(path))) from None
