"""`memplan replay`'s answer: per card and allocator setting, whether the recorded step fits.

Rows come from memplan.planning.replay; bytes stay integers until here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from memplan.planning.replay import Replay, setting_label
from memplan.planning.trace_family import LengthScan
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


def longest_table(scans: list[tuple[str, LengthScan]], *, traced: tuple[int, ...], title: str) -> Table:
    """One row per card and setting: the longest length every rung up to fits, the first that runs out, and the
    rungs above it that fit again (memplan.planning.trace_family.LengthScan)."""
    table = Table(title=title)
    for column in ("card", "allocator limit GiB", "setting", "longest that fits", "first OOM", "fits again at"):
        table.add_column(column, justify="left" if column in ("card", "setting", "fits again at") else "right")
    for name, scan in scans:
        longest = "none" if scan.longest is None else f"{scan.longest:,}"
        if scan.longest is not None and scan.longest in traced:
            longest += " (traced)"
        first = f"{scan.first_oom:,}" if scan.first_oom is not None else f"none to {scan.rows[-1][0]:,}"
        again = ", ".join(f"{tokens:,}" for tokens in scan.fits_again) or ("none" if scan.first_oom else "")
        limit = "" if scan.limit_bytes is None else f"{scan.limit_bytes / GIB:.2f}"
        table.add_row(name, limit, setting_label(scan.max_split_bytes), longest, first, again)
    return table


def longest_document(*, family: Any, laws: dict[str, int], scans: list[tuple[str, LengthScan]],
                     step: int) -> dict[str, Any]:
    header = family.base.header
    return {"schema": "memplan.replay-longest/1", "model": header.get("model"), "traced_tokens": list(family.tokens),
            "run_ids": list(family.run_ids), "laws": laws, "step": step,
            "rows": [{"card": name, "setting": setting_label(scan.max_split_bytes), "limit_bytes": scan.limit_bytes,
                      "longest_tokens": scan.longest, "first_oom_tokens": scan.first_oom,
                      "fits_again_tokens": list(scan.fits_again),
                      "scanned": [[tokens, "fits" if result.fits else "oom"] for tokens, result in scan.rows]}
                     for name, scan in scans]}
