"""`memplan profile ...`: import a Hugging Face config.json, or compose components, into a profile YAML.

Thin: parse, call memplan.hf_import, render the counts (rich), write the file. Bad input prints
`error: <message>` on stderr and exits with code 2. torch/transformers load only inside `import`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from memplan.cli.options import console, user_errors
from memplan.loading import PROFILES_DIR, InputError

profile_app = typer.Typer(
    help="Create model profiles: import a Hugging Face config.json, or compose components.",
    no_args_is_help=True,
    add_completion=False,
)

_OUT_HELP = "Where to write the profile YAML (default: profiles/NAME.yaml)."
_FORCE_HELP = "Overwrite an existing file."


def _out_path(out: Optional[Path], name: str, force: bool) -> Path:
    """The target file; refused early (before any model is built) if it exists without --force."""
    path = out if out is not None else PROFILES_DIR / f"{name}.yaml"
    if path.exists() and not force:
        raise InputError(f"{path}: exists; pass --force to overwrite")
    return path


def _render(profile, measured=None) -> None:
    """Parameters per component and module kind (formula; instantiated beside it after an import)."""
    from rich.table import Table

    from memplan.hf_import import counts_table_rows

    table = Table(title=f"{profile.name}: parameters per component and module kind")
    table.add_column("component")
    table.add_column("module kind")
    table.add_column("params (formula)", justify="right")
    if measured is not None:
        table.add_column("params (instantiated)", justify="right")
    for slot, kind, formula, actual in counts_table_rows(profile, measured):
        table.add_row(slot, kind, f"{formula:,}", *([f"{actual:,}"] if measured is not None else []))
    table.add_section()
    for component, count in profile.component_params().items():
        table.add_row(component, "total", f"{count:,}", *([""] if measured is not None else []))
    table.add_row("all", "total", f"{profile.param_count():,}", *([""] if measured is not None else []), style="bold")
    console().print(table)


@profile_app.command("import")
@user_errors
def import_command(
    config: Path = typer.Argument(..., help="A Hugging Face config.json (no weights are read or downloaded)."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name (default: the config's folder name)."),
    out: Optional[Path] = typer.Option(None, "--out", help=_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
) -> None:
    """Import CONFIG: map it to memplan's specs, check the counts against the transformers model
    instantiated on the meta device, and write the profile."""
    from memplan import hf_import

    name = name or hf_import.default_name(config)
    path = _out_path(out, name, force)
    result = hf_import.inspect_config(config, name)
    _render(result.profile, result.measured)
    hf_import.write_profile(result.profile, path, overwrite=True)
    typer.echo(f"wrote {path} (counts equal the instantiated {result.model_class})")


@profile_app.command("compose")
@user_errors
def compose_command(
    vision: Optional[str] = typer.Option(None, "--vision", help="Vision tower: a component name or YAML path."),
    llm: Optional[str] = typer.Option(None, "--llm", help="LLM: a component name or YAML path."),
    sam2: Optional[str] = typer.Option(None, "--sam2", help="SAM2: a component name or YAML path."),
    projector: Optional[str] = typer.Option(None, "--projector", help="Projector (default: derived from the widths)."),
    seg_head: Optional[str] = typer.Option(None, "--seg-head", help="Seg head (default: Linear(h, h) -> Linear(h, 256))."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name (default: the parts' names joined)."),
    out: Optional[Path] = typer.Option(None, "--out", help=_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
) -> None:
    """Compose a Sa2VA-style profile from components; widths that disagree are named with both values."""
    from memplan import hf_import

    profile = hf_import.compose(vision=vision, projector=projector, llm=llm, sam2=sam2, seg_head=seg_head, name=name)
    path = _out_path(out, profile.name, force)
    _render(profile)
    hf_import.write_profile(profile, path, overwrite=True)
    typer.echo(f"wrote {path}")
