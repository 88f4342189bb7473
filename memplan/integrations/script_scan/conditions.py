"""The ``if`` tests around a finding, evaluated statically: a finding's settings apply only when every
enclosing test is known true with the script's defaults (memplan.integrations.script_scan)."""

from __future__ import annotations

import ast
import operator
from typing import Any

from memplan.integrations.script_scan.reader import MISSING, partial

COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not}
DEFAULT_NOTE = "by the dataclass default; a command-line value may differ"


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Name) and target.id == "dataclass") or (
                isinstance(target, ast.Attribute) and target.attr == "dataclass"):
            return True
    return False


def _field_default(value: ast.AST) -> ast.AST | None:
    """``field(default=X)`` -> X; a plain ``= X`` -> X; ``field(default_factory=...)`` -> None."""
    if isinstance(value, ast.Call) and isinstance(value.func, (ast.Name, ast.Attribute)) and (
            getattr(value.func, "id", None) == "field" or getattr(value.func, "attr", None) == "field"):
        return next((k.value for k in value.keywords if k.arg == "default"), None)
    return value


def dataclass_defaults(*, tree: ast.Module) -> dict[str, tuple[ast.AST, int, str]]:
    """Every @dataclass field with a default, by field name: (default node, line, class); a name two
    dataclasses define is left out (which one an ``X.attr`` means is not known)."""
    found: dict[str, list[tuple[ast.AST, int, str]]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and _is_dataclass(node)):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                default = _field_default(item.value)
                if default is not None:
                    found.setdefault(item.target.id, []).append((default, item.lineno, node.name))
    return {name: hits[0] for name, hits in found.items() if len(hits) == 1}


def truth(script, node: ast.AST, depth: int = 0) -> tuple[Any, bool]:
    """The value of an ``if`` test (MISSING when not known statically), and whether a dataclass default was used."""
    if depth > 12:
        return MISSING, False
    if isinstance(node, ast.Compare) and _is_main_guard(node):
        return True, False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        value, by_default = truth(script, node.operand, depth + 1)
        return (MISSING if value is MISSING else not value), by_default
    if isinstance(node, ast.BoolOp):
        return _bool_op(script, node, depth)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARE:
        left, d1 = truth(script, node.left, depth + 1)
        right, d2 = truth(script, node.comparators[0], depth + 1)
        if left is MISSING or right is MISSING:
            return MISSING, False
        try:
            return COMPARE[type(node.ops[0])](left, right), d1 or d2
        except TypeError:
            return MISSING, False
    value, via = script.value(node)
    return value, "dataclass default" in via


def _bool_op(script, node: ast.BoolOp, depth: int) -> tuple[Any, bool]:
    """``and`` / ``or`` with Python's short-circuit: ``False and ?`` is False, ``True or ?`` is True."""
    stop = isinstance(node.op, ast.Or)
    unknown, by_default = False, False
    for operand in node.values:
        value, used = truth(script, operand, depth + 1)
        by_default |= used
        if value is MISSING:
            unknown = True
        elif bool(value) is stop:
            return value, by_default
    return (MISSING if unknown else (not stop)), by_default


def _is_main_guard(node: ast.Compare) -> bool:
    names = [node.left, *node.comparators]
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
        partial(n) == "__main__" for n in names)


def gate(script, *, node: ast.AST, settings: dict[str, Any], note: str) -> tuple[dict[str, Any], str, str]:
    """A finding's settings and note under its enclosing ``if`` tests, and its status: "always" (no test),
    "taken" (every test known to hold), "not taken" (one known not to) or "unknown" (assumed not taken)."""
    tests = script.reader.conditions.get(id(node), ())
    tests = tuple(t for t in tests if not (isinstance(t[0], ast.Compare) and _is_main_guard(t[0])))
    if not tests:
        return settings, note, "always"
    parts, status, by_default = [], "taken", False
    for test, branch in tests:
        value, used = truth(script, test)
        by_default |= used
        text = ast.unparse(test)[:60]
        parts.append(f"if {text}" if branch else f"else of if {text}")
        if value is MISSING:
            status = "unknown" if status == "taken" else status
        elif bool(value) is not branch:
            status = "not taken"
    where = "under " + ", ".join(parts)
    default = f" ({DEFAULT_NOTE})" if by_default else ""
    if status == "taken":
        return settings, _join(note, f"{where}: taken with the defaults{default}"), status
    if status == "not taken":
        return {}, _join(note, f"{where}: not taken with the defaults{default}"), status
    unknown = [ast.unparse(t)[:60] for t, _ in tests if truth(script, t)[0] is MISSING]
    tail = "; pass the setting yourself" if settings else ""
    return {}, _join(note, f"depends on {' and '.join(unknown)}: assumed not taken{tail}"), status


def _join(note: str, extra: str) -> str:
    return f"{note}; {extra}" if note else extra
