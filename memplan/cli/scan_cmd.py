"""`memplan scan SCRIPT`: read a training script without running it (memplan.integrations.script_scan),
print what it found and the plan settings it implies, and with --out write the full plan."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from memplan.cli.options import console, out_file, user_errors
from memplan.spec.errors import InputError, printable


class ScanFormat(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


def _shown(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1).removesuffix("\n...\n").strip()


def _settings_text(finding) -> str:
    return ", ".join(f"{key}: {_shown(value)}" for key, value in finding.settings) or "-"


def _fragment_yaml(scan) -> str:
    import yaml

    fragment = scan.fragment()
    return yaml.safe_dump(fragment, sort_keys=False) if fragment else "{}\n"


def _table(scan, *, width: int):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"memplan scan {scan.script}: stack {scan.stack or 'not found'}", width=min(width, 200),
                  show_lines=False)
    for column in ("line", "finding", "value", "plan setting", "source / note"):
        table.add_column(column, overflow="fold")
    for finding in scan.findings:
        where = finding.snippet + (f"  ({finding.note})" if finding.note and finding.snippet else finding.note)
        table.add_row(*(escape(cell) for cell in (str(finding.line) if finding.line else "-", finding.name, finding.value,
                                                  _settings_text(finding), where)))
    return table


def _scanned_plan(scan, *, base: Optional[str]):
    """The full plan: the base plan with the scan's settings, validated (an InputError names what disagrees)."""
    from memplan.integrations.script_scan import plan_document_for
    from memplan.spec.loading import plan_from_document

    return plan_from_document(plan_document_for(scan=scan, base=base), f"the plan scanned from {scan.script}")


def _write_plan(scan, plan, *, base: Optional[str], out: Path) -> None:
    import yaml

    header = [f"# memplan scan {scan.script}" + (f" on --plan {base}" if base else "") + ": the base plan with",
              "# the settings the script implies (findings by line):"]
    header += [f"#   line {f.line or '-'}: {f.name} = {f.value} -> {_settings_text(f)}" for f in scan.findings if f.settings]
    text = "\n".join(header) + "\n" + yaml.safe_dump(plan.model_dump(mode="json", exclude_none=True), sort_keys=False)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as error:
        raise InputError(f"--out={printable(out)}: cannot write ({error.strerror or error})") from None


@user_errors
def scan(
    *,
    script: str = typer.Argument(..., help="The training script to read (never imported or run): Python (a Trainer, "
                                 "accelerate or hand-written loop; TRL; Unsloth; a Sa2VA xtuner config) or a LLaMA-Factory YAML."),
    plan: Optional[str] = typer.Option(None, "--plan", "-p", help="Base plan for --out (default: the official "
                                       "recipe, as the other commands)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the full plan (base plan + what the script implies) "
                                       "to PLAN.yaml, for memplan estimate --plan PLAN.yaml."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    output_format: ScanFormat = typer.Option(ScanFormat.table, "--format", "-f", help="table, json or yaml (the "
                                             "plan fragment)."),
) -> None:
    """Read a training script without running it: its stack and memory behaviours as plan settings."""
    import json

    from memplan.integrations.script_scan import scan_script

    result = scan_script(path=script)
    if out is not None:
        out_file(out, force=force, expected="a plan file (PLAN.yaml)")
    full = _scanned_plan(result, base=plan) if out is not None or plan is not None else None  # refuse before writing
    if out is not None:
        _write_plan(result, full, base=plan, out=out)
    if output_format is ScanFormat.json:
        typer.echo(json.dumps({**result.to_dict(), "written": str(out) if out is not None else None}, indent=2))
    elif output_format is ScanFormat.yaml:
        lines = [f"# line {f.line or '-'}: {f.name} = {f.value}" + (f" ({f.note})" if f.note else "")
                 for f in result.findings]
        typer.echo("\n".join([f"# memplan scan {result.script}", *lines]) + "\n" + _fragment_yaml(result), nl=False)
    else:
        terminal = console()
        terminal.print(_table(result, width=terminal.width))
        typer.echo("plan fragment it implies (what it does not set, hardware included, stays the base plan's: "
                   "--plan, or estimate's flags):")
        typer.echo(_fragment_yaml(result), nl=False)
    if out is not None:
        typer.echo(f"wrote {out} (plan {full.name}); estimate it: memplan estimate --plan {out}", err=True)
    elif output_format is ScanFormat.table:
        typer.echo("(nothing written; --out PLAN.yaml writes the full plan)")
