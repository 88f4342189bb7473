"""The `memplan profiles` table, fitted to the terminal: below 100 columns the name, total, LLM,
vision and SAM2 counts; below 140 also the projector and seg head; from 140 on (or ``wide``) the
description too. Counts are parameters, shown in millions."""

from __future__ import annotations

from typing import Any

from rich.table import Table

COLUMNS = (("total", "total_params"), ("llm", "llm"), ("vision", "vision"), ("projector", "projector"),
           ("sam2", "sam2"), ("seg head", "seg_head"))
NARROW = ("total", "llm", "vision", "sam2")


def millions(count: int | None) -> str:
    return f"{count / 1e6:,.1f}M" if count else ""


def _counts(row: dict[str, Any]) -> dict[str, int | None]:
    c = row["components"]
    sam2 = (c.get("sam2_encoder") or 0) + (c.get("sam2_decoder") or 0)
    return {"total_params": row["total_params"], "llm": c.get("llm"), "vision": c.get("vision"),
            "projector": c.get("projector"), "sam2": sam2, "seg_head": c.get("seg_head")}


def profiles_table(rows: list[dict[str, Any]], *, width: int | None = None, wide: bool = False) -> Table:
    every = wide or width is None or width >= 140
    columns = [(t, k) for t, k in COLUMNS if every or (width or 0) >= 100 or t in NARROW]
    table = Table(title="memplan profiles (parameters)")
    table.add_column("name", no_wrap=True)
    for title, _ in columns:
        table.add_column(title, justify="right", no_wrap=True)
    if every:
        room = 70 if width is None else max(20, min(70, width - 102))  # the counts take ~100 columns
        table.add_column("description", overflow="ellipsis", no_wrap=True, max_width=room)
    for row in rows:
        counts = _counts(row)
        cells = [row["name"], *(millions(counts[key]) for _, key in columns)]
        table.add_row(*cells, *([row["description"]] if every else []))
    return table
