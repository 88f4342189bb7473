"""Bad user input as one line: the error type every loader raises and the functions that word it.

Every failure raises ``InputError`` whose message names the field, the value and what is allowed;
the CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

from pydantic import BaseModel, ValidationError


class InputError(ValueError):
    """Bad user input: a one-line message naming the field, the value and what is allowed."""


_REPR = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def shown(value: Any) -> str:
    """A short, bounded repr of a user value (never walks a huge or deeply nested structure)."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def printable(text: Any) -> str:
    """A key or path as written when it is plain one-line text, else its bounded repr (a key holding
    a newline or a line separator must not break the one-line message)."""
    text = str(text)
    return text if text.isprintable() and len(text) <= 200 else shown(text)


def _dotted(parts: Any) -> str:
    return ".".join(printable(part) for part in parts)


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (for listing its allowed keys)."""
    import typing

    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *typing.get_args(annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def describe_validation_error(error: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    """Turn pydantic's multi-line report into one line: 'where: field=value: why'.

    With ``model`` (the class validated), an unknown key's message lists the keys its section allows."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    field = _dotted(loc) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    extra = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    if first["type"] == "extra_forbidden":
        holder = _model_at(model, loc[:-1])
        section = _dotted(loc[:-1]) or "the top level"
        keys = [info.alias or name for name, info in holder.model_fields.items()] if holder else []
        allowed = f"; {section} allows: {', '.join(keys)}" if holder else " (not a field of this section)"
        return f"{where}: unknown key '{field}'={shown(first.get('input'))}{allowed}{extra}"
    if first["type"] == "missing":
        return f"{where}: missing required field '{field}'{extra}"
    if first["type"] == "value_error":  # a section's own validator: its message names fields and values
        section = _dotted(loc)
        if section and not message.startswith(str(loc[0])):
            message = f"{section}.{message}"
        return f"{where}: {message}{extra}"
    value = first.get("input")
    value_text = "{...}" if isinstance(value, dict) else shown(value)
    prefix = f"{where}: {field}={value_text}: " if loc else f"{where}: "
    return f"{prefix}{message}{extra}"


def check_finite(document: Any, where: str) -> None:
    """Reject NaN and infinities anywhere in a document: no memory size or count is infinite.
    Iterative, and each container is visited once (YAML aliases may share or nest one)."""
    stack: list[tuple[Any, str]] = [(document, "")]
    seen: set[int] = set()
    while stack:
        node, at = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise InputError(f"{where}: {at or '(top level)'}={node!r}: must be a finite number")
        if isinstance(node, (dict, list, tuple)):
            if id(node) in seen:
                continue
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((value, f"{at}.{printable(key)}" if at else printable(key)) for key, value in items)
