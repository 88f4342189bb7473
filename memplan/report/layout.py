"""Compare/search tables that fit the terminal: fewer columns when narrow, short plan labels with a
legend when names are long, what each plan saves against the first (or the base plan), and the
prose (what a plan gives up, the top advice) as lines under the table unless the table is wide.

Tiers (terminal columns): below MEDIUM the numbers only; below WIDE the numbers and hardware; from
WIDE on, or with ``wide=True``, every column in the table as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from memplan.spec.units import format_gib

if TYPE_CHECKING:
    from memplan.planning.evaluate import Evaluation
    from memplan.report.compare import Report

MEDIUM = 110
WIDE = 180
LONG_NAME = 14  # longer plan names become #1, #2 ... with a legend (below WIDE)


def tier(width: int | None, wide: bool) -> str:
    if wide or width is None or width >= WIDE:
        return "wide"
    return "medium" if width >= MEDIUM else "narrow"


def labels(report: "Report", width: int | None, wide: bool) -> tuple[list[str], bool]:
    """(label per row, whether they are short labels that need the legend)."""
    names = [row.name for row in report.rows]
    short = tier(width, wide) != "wide" and any(len(name) > LONG_NAME for name in names)
    return ([f"#{i}" for i in range(1, len(names) + 1)] if short else names), short


def saves_bytes(report: "Report", row: "Evaluation") -> int | None:
    """What ``row`` saves against the report's baseline (needed bytes per GPU); None for the baseline."""
    baseline = report.baseline_needed_bytes
    if baseline is None:
        if row is report.rows[0]:
            return None
        baseline = report.rows[0].estimate.needed_bytes
    return baseline - row.estimate.needed_bytes


def saves_text(report: "Report", row: "Evaluation") -> str:
    saved = saves_bytes(report, row)
    return "-" if saved is None else f"{saved / 2**30:+.2f}"


def _verdict(row: "Evaluation") -> str:
    return f"[bold {'green' if row.fits else 'red'}]{row.outcome}[/]"


def _prose(report: "Report", row: "Evaluation", *, label: str, short: bool) -> str:
    name = f"{label} {row.name}" if short else row.name
    last = f"fidelity {row.fidelity:.3f}" if report.kind == "search" else ""
    from memplan.report.compare import top_advice

    advice = "" if report.kind == "search" else top_advice(row)
    parts = [f"gives up {row.gives_up.text()}", *([last] if last else []), *([f"top advice: {advice}"] if advice else [])]
    return f"{name}: " + "; ".join(parts)


def compact_table(report: "Report", *, width: int | None, wide: bool = False) -> Group:
    """The report as a table that fits ``width`` columns, then the legend, the prose and the notes."""
    from memplan.report.compare import report_table_wide

    level = tier(width, wide)
    if level == "wide":
        return report_table_wide(report)
    names, short = labels(report, width, wide)
    against = "base plan" if report.baseline_needed_bytes is not None else report.rows[0].name if report.rows else ""
    table = Table(title=report.title, box=box.SIMPLE_HEAD if level == "narrow" else box.HEAVY_HEAD)
    table.add_column("plan", no_wrap=True)
    if level == "medium":
        table.add_column("GPUs", no_wrap=True)
    table.add_column("needs GiB", justify="right", no_wrap=True)
    table.add_column("saves", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    if level == "medium":
        table.add_column("host GiB", justify="right", no_wrap=True)
        table.add_column("s/sample", justify="right", no_wrap=True)
    table.add_column("slowdown", justify="right", no_wrap=True)
    for label, row in zip(names, report.rows):
        e = row.estimate
        cells = [label]
        if level == "medium":
            cells.append(f"{e.num_gpus} x {format_gib(e.vram_bytes, 0)} {row.step.gpu}")
        cells += [format_gib(e.needed_bytes), saves_text(report, row), _verdict(row)]
        if level == "medium":
            forward = "" if row.plan.mode == "train" else " fwd"
            cells += [f"{format_gib(e.host_bytes, 1)}/{format_gib(e.host_ram_bytes, 0)}",
                      f"{row.step.per_sample:.2f}{forward}"]
        cells.append(f"{row.slowdown:.2f}x")
        table.add_row(*cells)
    lines = [Text(_prose(report, row, label=label, short=short)) for label, row in zip(names, report.rows)]
    hint = Text(f"(needs: GiB per GPU the card must hold; saves: GiB less than {against}; "
                "--wide shows every column)", style="dim")
    return Group(table, *lines, hint, *[Text(note) for note in report.notes])
