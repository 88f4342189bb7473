"""What compare and search share: report formats, writing the report and charts under --out,
picking the plan for --emit-deepspeed, and printing what the emission wrote."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from memplan.cli.options import (CALIBRATION, CHOOSE, DATASET, EMIT, EXIT_CODE, PRICE, SCRIPT, WIDE, console, fail,
                                 option_group)


class ReportFormat(str, Enum):
    table = "table"
    md = "md"
    html = "html"
    json = "json"
    csv = "csv"


EXTENSIONS = {ReportFormat.table: "md", ReportFormat.md: "md", ReportFormat.html: "html",
              ReportFormat.json: "json", ReportFormat.csv: "csv"}

FORMAT = typer.Option(ReportFormat.table, "--format", "-f", help="table, md, html, json or csv.")
OUT = typer.Option(None, "--out", help="Write the report and its charts into this folder (default: print only).")
FORCE = typer.Option(False, "--force", help="Overwrite report files that exist in --out.")

REPORT_OPTIONS = {
    "calibration": (Optional[str], CALIBRATION), "output_format": (ReportFormat, FORMAT), "out": (Optional[Path], OUT),
    "force": (bool, FORCE), "wide": (bool, WIDE), "exit_code": (bool, EXIT_CODE),
    "emit_deepspeed_to": (Optional[Path], EMIT), "choose": (Optional[str], CHOOSE), "script": (str, SCRIPT),
    "dataset_samples": (Optional[int], DATASET), "price": (Optional[float], PRICE),
}


def report_options(fn):
    """compare's and search's shared options (--calibration, --format, --out, --force, --wide, --exit-code, --emit-deepspeed,
    --choose, --script, --dataset-samples, --price), last, handed to the command as one dict, ``report``."""
    return option_group(REPORT_OPTIONS, tuple(REPORT_OPTIONS), into="report")(fn)

def step_note(calibration, *, rows=()) -> str:
    """Where the step times come from: the calibrated mechanistic model, how to see its terms, and which
    cards of ``rows`` (evaluations) have no step-time terms of their own."""
    from memplan.planning.steptime import default_terms

    terms = calibration.step_time if calibration is not None and calibration.step_time else default_terms()
    fitted = (f"terms fitted on {terms.records} probe runs ({', '.join(k for k in terms.efficiency if k != 'default')})"
              if terms.records else "literature defaults (not fitted)")
    untuned = sorted({row.step.gpu for row in rows if not row.step.card_terms})
    caution = (f"; no per-card fit for {', '.join(untuned)}: the default terms there compare plans, they do not size "
               f"a schedule (memplan calibrate --terms step-time --card fits one from your probe records)" if untuned else "")
    return (f"step time: memplan.planning.steptime, per rank from mechanisms (compute per kernel class, framework "
            f"calls, ZeRO-3 gathers, collectives, offload copies, CPU Adam); {fitted}{caution}; the terms of every "
            f"plan are in --format json (step_breakdown_seconds); docs/benchmarks.md has its measured accuracy")


def _render(report, output_format: ReportFormat, *, rendered_charts: dict[str, tuple[str, bytes]],
            extra_json: dict | None) -> str:
    from memplan.report import compare as render

    if output_format is ReportFormat.html:
        return render.report_html(report, {t: png for t, (_, png) in rendered_charts.items()})
    if output_format is ReportFormat.json:
        return render.report_json(report, extra_json)
    if output_format is ReportFormat.csv:
        return render.report_csv(report)
    return render.report_markdown(report, {t: name for t, (name, _) in rendered_charts.items()})


def _print_only(report, output_format: ReportFormat, *, extra_json: dict | None, wide: bool) -> None:
    """No --out: the report on stdout, nothing written."""
    from memplan.report import compare as render

    if output_format is ReportFormat.table:
        terminal = console()
        terminal.print(render.report_table(report, width=terminal.width, wide=wide))
        typer.echo("(nothing written; --out DIR writes the report and its charts)")
        return
    text = _render(report, output_format, rendered_charts={}, extra_json=extra_json)
    typer.echo(text, nl=not text.endswith("\n"))


def _refuse_existing(out: Path, names: list[str], force: bool) -> None:
    existing = [name for name in names if (out / name).exists()]
    if existing and not force:
        fail(f"--out={out}: {', '.join(existing)} exist; pass --force to overwrite")


def write_outputs(report, output_format: ReportFormat, out: Path | None, *, extra_json: dict | None = None,
                  force: bool = False, wide: bool = False) -> list[str]:
    """Print the report in ``output_format``; with ``out``, write it (and charts) there, refusing to
    overwrite files without ``force``; return notes."""
    from memplan.report import charts
    from memplan.report import compare as render

    if out is None:
        _print_only(report, output_format, extra_json=extra_json, wide=wide)
        return []
    if out.exists() and not out.is_dir():
        fail(f"--out={out}: exists and is not a directory (reports are written into a directory)")
    with_charts = output_format in (ReportFormat.table, ReportFormat.md, ReportFormat.html)
    chart_names = [f"{report.kind}-memory.png", f"{report.kind}-phases.png"] if with_charts and report.rows else []
    _refuse_existing(out, [f"{report.kind}.{EXTENSIONS[output_format]}", *chart_names], force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"--out={out}: cannot create ({error.strerror or error})")
    written: list[str] = []
    notes: list[str] = []
    rendered_charts: dict[str, tuple[str, bytes]] = {}
    if with_charts:
        rendered_charts = charts.render_all(report.rows, report.kind)
        if not rendered_charts and report.rows:
            notes.append(charts.MISSING)
        for file_name, png in rendered_charts.values():
            (out / file_name).write_bytes(png)
            written.append(str(out / file_name))
    target = out / f"{report.kind}.{EXTENSIONS[output_format]}"
    text = _render(report, output_format, rendered_charts=rendered_charts, extra_json=extra_json)
    target.write_text(text, encoding="utf-8")
    written.insert(0, str(target))
    notes.append("wrote " + ", ".join(written))
    if output_format is ReportFormat.table:
        terminal = console()
        terminal.print(render.report_table(report, width=terminal.width, wide=wide))
        for note in notes:
            typer.echo(note)
    elif output_format is ReportFormat.html:
        for note in notes:
            typer.echo(note)
    else:
        typer.echo(text, nl=not text.endswith("\n"))
        for note in notes:
            typer.echo(note, err=True)
    return notes


def choose_row(rows, choose: str | None, default_index: int | None):
    """The row --choose names (a plan name or a 1-based number), else ``default_index``; exit 2 otherwise."""
    if choose is None:
        if default_index is None:
            fail("--emit-deepspeed: no plan fits and trains; pick one with --choose NAME|INDEX")
        return rows[default_index]
    if choose.isdigit():
        index = int(choose)
        if not 1 <= index <= len(rows):
            fail(f"--choose={choose}: row numbers run 1..{len(rows)}")
        return rows[index - 1]
    for row in rows:
        if row.name == choose:
            return row
    fail(f"--choose={choose!r}: no such plan; choose from: {', '.join(r.name for r in rows)} (or 1..{len(rows)})")


def emit_deepspeed(plan, *, model: str, name: str, target: Path, script: str, vram_gib: float | None = None) -> None:
    """Write the DeepSpeed config and the plan beside it (memplan.integrations.deepspeed.write_config);
    print the launch line and the probe line that checks the pair on a real (or capped) card."""
    from memplan.integrations.deepspeed import launch_command, launch_comment, write_config

    plan_file = write_config(plan, model=model, name=name, target=target)
    typer.echo(f"wrote {target} (DeepSpeed config of {name}) and {plan_file}", err=True)
    typer.echo(launch_comment())
    typer.echo(launch_command(plan, script, args=f"--deepspeed {target}"))
    cap = f" --vram-cap {vram_gib:g}" if vram_gib else ""
    typer.echo(f"check it: memplan probe --plan {plan_file} --deepspeed-config {target}{cap}", err=True)
