"""Byte units. Bytes are ``int`` everywhere; units appear only when rendering."""

from __future__ import annotations

KIB = 1024
MIB = 1024**2
GIB = 1024**3

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "fp8": 1}


def gib_to_bytes(gib: float) -> int:
    return int(round(gib * GIB))


def format_gib(num_bytes: int, digits: int = 2) -> str:
    return f"{num_bytes / GIB:.{digits}f}"
