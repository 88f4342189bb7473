"""`memplan replay`'s answer: per card and allocator setting, whether the recorded step fits.

Rows come from memplan.planning.replay; bytes stay integers until here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from memplan.planning.replay import Replay
from memplan.spec.units import GIB, format_gib


@dataclass(frozen=True)
class CardReplay:
    """One row: the card (or cap) as named, its allocator limit, and the replay under one setting."""

    card: str
    replay: Replay

    def verdict(self) -> str:
        return "FITS" if self.replay.fits else "OOM"

    def as_dict(self) -> dict[str, Any]:
        failure = self.replay.failure
        return {"card": self.card, "setting": self.replay.setting, "limit_bytes": self.replay.limit_bytes,
                "verdict": self.verdict().lower(), "peak_reserved_bytes": self.replay.peak_reserved_bytes,
                "requests_served": self.replay.requests_served,
                "failure": None if failure is None else {
                    "requested_bytes": failure.requested_bytes, "reserved_bytes": failure.reserved_bytes,
                    "allocated_bytes": failure.allocated_bytes,
                    "largest_free_block_bytes": failure.largest_free_block_bytes}}


def fidelity_line(*, unlimited: Replay, measured: int | None, reproduced: bool | None) -> str:
    """Whether the replay reproduces the recorded run (its peak reserved), in one line."""
    replayed = f"replayed without a limit: peak reserved {format_gib(unlimited.peak_reserved_bytes)} GiB"
    if measured is None:
        return replayed + " (the run recorded no default-allocator peak to compare)"
    delta = (unlimited.peak_reserved_bytes - measured) / measured
    word = "reproduces the run" if reproduced else "DOES NOT reproduce the run: treat the verdicts as unsure"
    return f"{replayed}, the run measured {format_gib(measured)} GiB ({delta:+.1%}): {word}"


def replay_table(rows: list[CardReplay], *, title: str) -> Table:
    table = Table(title=title)
    for column in ("card", "allocator limit GiB", "setting", "verdict", "peak reserved GiB", "where it failed"):
        table.add_column(column, justify="left" if column in ("card", "setting", "where it failed") else "right")
    for row in rows:
        failure = row.replay.failure
        where = "" if failure is None else (
            f"request {row.replay.requests_served + 1}: {format_gib(failure.requested_bytes)} GiB asked, "
            f"{format_gib(failure.reserved_bytes - failure.allocated_bytes)} GiB free in the cache, largest "
            f"block {format_gib(failure.largest_free_block_bytes)} GiB")
        limit = "" if row.replay.limit_bytes is None else f"{row.replay.limit_bytes / GIB:.2f}"
        table.add_row(row.card, limit, row.replay.setting, row.verdict(), format_gib(row.replay.peak_reserved_bytes),
                      where)
    return table


def replay_document(*, header: dict[str, Any], rows: list[CardReplay], unlimited: Replay, measured: int | None,
                    reproduced: bool | None, smallest: dict[str, int]) -> dict[str, Any]:
    return {"schema": "memplan.replay/1", "run_id": header.get("run_id"), "model": header.get("model"),
            "gpu_name": header.get("gpu_name"), "unlimited_peak_reserved_bytes": unlimited.peak_reserved_bytes,
            "measured_peak_reserved_bytes": measured, "reproduces": reproduced,
            "smallest_limit_bytes": smallest, "rows": [row.as_dict() for row in rows]}
