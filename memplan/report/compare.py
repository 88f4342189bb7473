"""Side-by-side reports of several plans (``memplan compare``, ``memplan search``): rich table,
Markdown, self-contained HTML, JSON and CSV. Bytes stay ``int`` until rendered here.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from memplan.planning.evaluate import Evaluation
from memplan.spec.units import format_gib

def step_text(row: Evaluation) -> str:
    mode = "" if row.plan.mode == "train" else " (forward only)"
    per_sample = f" ({row.step.per_sample:.2f}/sample)" if row.step.micro_batch > 1 else ""
    return f"{row.step.seconds:.2f} s{per_sample}{mode}"


def epoch_text(row: Evaluation) -> str:
    seconds = row.step.epoch_seconds(row.dataset_samples) if row.dataset_samples else None
    return "" if seconds is None else f"{seconds / 3600:.1f} h"


def cost_text(row: Evaluation) -> str:
    if not row.dataset_samples or row.price is None:
        return ""
    return f"{row.step.epoch_cost(row.dataset_samples, row.price):,.2f}"


def top_advice(row: Evaluation) -> str:
    if row.advice is None or row.estimate.clear_fit:
        return ""
    best = row.advice.top()
    if best is None:
        return "no single change or pair fits: try `memplan search`"
    saves = row.estimate.needed_bytes - best.estimate.needed_bytes
    return (f"{best.label} saves {format_gib(saves)} GiB (needs {format_gib(best.estimate.needed_bytes)}), "
            f"{best.slowdown:.2f}x time, gives up {best.gives_up}")


def row_dict(row: Evaluation) -> dict[str, Any]:
    """One plan of the JSON report: bytes as integers."""
    e = row.estimate
    lost = row.gives_up
    return {
        "plan": row.name, "description": row.plan.description, "model": row.profile.name,
        "mode": row.plan.mode, "num_gpus": e.num_gpus, "gpu": row.step.gpu,
        "verdict": e.verdict.value, "tight": e.tight, "host_fits": e.host_fits,
        "device_bytes": e.device_bytes, "needed_bytes": e.needed_bytes, "peak_allocated_bytes": e.peak_allocated_bytes,
        "peak_reserved_bytes": e.peak_reserved_bytes, "vram_bytes": e.vram_bytes,
        "headroom_bytes": e.headroom_bytes, "peak_phase": e.peak_phase.value,
        "peak_moment": e.peak.moment.label, "host_bytes": e.host_bytes, "host_ram_bytes": e.host_ram_bytes,
        "phases_needed_bytes": row.phase_needed_bytes,
        "step_seconds": round(row.step.seconds, 4), "seconds_per_sample": round(row.step.per_sample, 4),
        "slowdown": round(row.slowdown, 4), "step_breakdown_seconds": {k: round(v, 4) for k, v in row.step.breakdown.items()},
        "samples_per_s": round(row.step.samples_per_s, 4), "tokens_per_s": round(row.step.tokens_per_s, 1),
        **({"epoch_seconds": round(row.step.epoch_seconds(row.dataset_samples), 1)} if row.dataset_samples else {}),
        **({"epoch_cost": round(row.step.epoch_cost(row.dataset_samples, row.price), 2)}
           if row.dataset_samples and row.price is not None else {}),
        "fidelity": row.fidelity, "sam2_resolution": row.plan.inputs.sam2_resolution,
        "trainable_params": lost.trainable[1], "reference_trainable_params": lost.trainable[0],
        "gives_up": lost.lines(),
        "breakdown": [{"component": t.component.value, "category": t.category.value, "bytes": t.bytes}
                      for t in e.breakdown()],
        "advice": row.advice.to_dict() if row.advice and not row.estimate.clear_fit else None,
        **({"knobs": row.knobs} if row.knobs else {}),
    }


@dataclass
class Report:
    """A titled list of rows with notes (the search's statistics, what was assumed)."""

    title: str
    rows: list[Evaluation]
    reference: str  # name of the reference recipe
    notes: list[str] = field(default_factory=list)
    kind: str = "compare"  # compare | search: names the files written
    baseline_needed_bytes: int | None = None  # what "saves" is against (None: the first row)


# ---------------------------------------------------------------- cells shared by every format
def _peak(row: Evaluation) -> str:
    return f"{format_gib(row.estimate.needed_bytes)} ({row.estimate.peak_phase.value})"


def _host(row: Evaluation) -> str:
    e = row.estimate
    return f"{format_gib(e.host_bytes, 1)}/{format_gib(e.host_ram_bytes, 0)}"


def _model(row: Evaluation) -> str:
    return f"{row.profile.name} ({row.plan.mode})" if row.plan.mode != "train" else row.profile.name


COLUMNS = ("plan", "model", "GPUs", "peak/GPU GiB (phase)", "saves GiB", "headroom GiB", "verdict", "host RAM GiB",
           "step", "slowdown", "gives up", "top advice")
VERDICT = COLUMNS.index("verdict")
SEARCH_LAST = "fidelity"  # a search shows only plans that fit: fidelity instead of advice


def _epoch_columns(rows: list[Evaluation]) -> tuple[str, ...]:
    """'epoch' with --dataset-samples, 'cost/epoch' with --price too."""
    first = rows[0] if rows else None
    if first is None or not first.dataset_samples:
        return ()
    return ("epoch", "cost/epoch") if first.price is not None else ("epoch",)


def _columns(report: "Report") -> tuple[str, ...]:
    last = SEARCH_LAST if report.kind == "search" else COLUMNS[-1]
    return (*COLUMNS[:-2], *_epoch_columns(report.rows), f"gives up (vs {report.reference})", last)


def _cells(row: Evaluation, report: "Report") -> list[str]:
    from memplan.report.layout import saves_text

    e = row.estimate
    last = f"{row.fidelity:.3f}" if report.kind == "search" else top_advice(row)
    epoch = [epoch_text(row), cost_text(row)][:len(_epoch_columns([row]))]
    return [row.name, _model(row), f"{e.num_gpus} x {format_gib(e.vram_bytes, 0)} {row.step.gpu}", _peak(row),
            saves_text(report, row), format_gib(e.headroom_bytes), row.outcome, _host(row), step_text(row),
            f"{row.slowdown:.2f}x", *epoch, row.gives_up.text(), last]


# ---------------------------------------------------------------- rich
def report_table(report: Report, *, width: int | None = None, wide: bool = False) -> Group:
    """The report for a terminal of ``width`` columns (memplan.report.layout); every column when wide."""
    from memplan.report.layout import compact_table

    return compact_table(report, width=width, wide=wide)


def report_table_wide(report: Report) -> Group:
    table = Table(title=report.title, show_lines=True)
    for column in _columns(report):
        numeric = column in ("saves GiB", "headroom GiB", "slowdown", "step", "epoch", "cost/epoch", SEARCH_LAST)
        table.add_column(column, justify="right" if numeric else "left", overflow="fold",
                         max_width=34 if column.startswith("gives up") or column == "top advice" else None)
    for row in report.rows:
        cells = _cells(row, report)
        style = "green" if row.fits else "red"
        cells[VERDICT] = f"[bold {style}]{cells[VERDICT]}[/]"
        table.add_row(*cells)
    lines = [Text(note) for note in report.notes]
    return Group(table, *lines)


# ---------------------------------------------------------------- Markdown
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def advice_lines(row: Evaluation) -> list[str]:
    """Diagnosis and both rankings of the advice, as plain text lines."""
    if row.advice is None:
        return []
    lines = list(row.advice.diagnosis)
    if row.advice.changes:
        lines.append(f"changes that fit ({len(row.advice.changes)} of {row.advice.tried} tried), by slowdown:")
        lines += [f"  {i}. {c.line()}" for i, c in enumerate(row.advice.by_slowdown(), 1)]
        lines.append("the same, by what they give up:")
        lines += [f"  {i}. {c.line()}" for i, c in enumerate(row.advice.by_sacrifice(), 1)]
    return lines


def _advice_markdown(row: Evaluation) -> list[str]:
    advice = row.advice
    out = [f"- {line}" for line in advice.diagnosis]
    if advice.changes:
        for heading, ranked in (("by estimated slowdown", advice.by_slowdown()),
                                ("by what they give up", advice.by_sacrifice())):
            out += ["", f"Changes that fit ({len(advice.changes)} of {advice.tried} tried), {heading}:", ""]
            out += [f"{i}. {_md_escape(c.line())}" for i, c in enumerate(ranked, 1)]
    return out


def report_markdown(report: Report, charts: dict[str, str] | None = None) -> str:
    out = [f"# {report.title}", ""]
    out += [f"- {note}" for note in report.notes]
    columns = _columns(report)
    out += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in report.rows:
        cells = [_md_escape(c) for c in _cells(row, report)]
        cells[VERDICT] = f"**{cells[VERDICT]}**"
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for row in report.rows:
        if row.plan.description:
            out.append(f"- **{row.name}**: {_md_escape(row.plan.description)}")
    for title, file_name in (charts or {}).items():
        out += ["", f"![{title}]({file_name})"]
    for row in report.rows:
        if row.advice is not None:
            out += ["", f"## {row.name}: why it does not fit and what would", ""]
            out += _advice_markdown(row)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- HTML (self-contained)
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f3f3f3}td.fits{color:#1a7f37;font-weight:bold}td.oom{color:#c62828;font-weight:bold}
img{max-width:100%;margin:1em 0}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap}"""


def report_html(report: Report, charts: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML file: the table, notes, advice and the charts as base64 PNGs."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in _columns(report))
    body = []
    for row in report.rows:
        cells = _cells(row, report)
        tds = [f"<td>{esc(c)}</td>" for c in cells]
        tds[VERDICT] = f"<td class=\"{'fits' if row.fits else 'oom'}\">{esc(cells[VERDICT])}</td>"
        body.append("<tr>" + "".join(tds) + "</tr>")
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{esc(report.title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{esc(report.title)}</h1>",
             "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in report.notes) + "</ul>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>",
             "<ul>" + "".join(f"<li><b>{esc(r.name)}</b>: {esc(r.plan.description)}</li>"
                              for r in report.rows if r.plan.description) + "</ul>"]
    for title, png in (charts or {}).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{esc(title)}</h2><img alt=\"{esc(title)}\" src=\"data:image/png;base64,{data}\">")
    for row in report.rows:
        lines = advice_lines(row)
        if lines:
            parts.append(f"<h2>{esc(row.name)}: why it does not fit and what would</h2><pre>{esc(chr(10).join(lines))}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---------------------------------------------------------------- JSON, CSV
def report_json(report: Report, extra: dict[str, Any] | None = None) -> str:
    from memplan.report.layout import saves_bytes

    plans = [{**row_dict(row), "saves_bytes": saves_bytes(report, row)} for row in report.rows]
    document = {"title": report.title, "reference": report.reference, "notes": report.notes,
                "plans": plans, **(extra or {})}
    return json.dumps(document, indent=2)


CSV_FIELDS = ("plan", "model", "mode", "num_gpus", "gpu", "verdict", "host_fits", "device_bytes", "needed_bytes",
              "saves_bytes",
              "peak_allocated_bytes", "vram_bytes", "headroom_bytes", "peak_phase", "host_bytes", "host_ram_bytes",
              "step_seconds", "seconds_per_sample", "slowdown", "fidelity", "sam2_resolution", "trainable_params",
              "gives_up", "top_advice")


def report_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        from memplan.report.layout import saves_bytes

        record = {**row_dict(row), "saves_bytes": saves_bytes(report, row)}
        record["gives_up"] = "; ".join(record["gives_up"])
        record["top_advice"] = top_advice(row)
        writer.writerow({k: record.get(k) for k in CSV_FIELDS})
    return buffer.getvalue()
