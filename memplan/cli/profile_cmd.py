"""`memplan profile ...`: import a Hugging Face config.json, or compose components, into a profile YAML.

Thin: parse, call memplan.integrations.huggingface, render the counts (rich), write the file. Bad input prints
`error: <message>` on stderr and exits with code 2. torch/transformers load only inside `import`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer

from memplan.cli.options import console, out_file, user_errors
from memplan.spec.loading import PACKAGE_ROOT, InputError, read_document, shown

profile_app = typer.Typer(
    help="Create model profiles: import a Hugging Face config.json, or compose components.",
    no_args_is_help=True,
    add_completion=False,
)

_OUT_HELP = ("Where to write the profile YAML (without it the YAML is printed and nothing is written; "
             "never inside the installed package).")
_FORCE_HELP = "Overwrite an existing file."


def _out_path(out: Optional[Path], force: bool) -> Optional[Path]:
    """The target file (None: print only); refused early (before any model is built) if it exists
    without --force."""
    if out is None:
        return None
    if PACKAGE_ROOT.resolve() in out.resolve().parents:
        raise InputError(f"--out={out}: inside the installed memplan package; write it elsewhere "
                         "(use it with -m PATH)")
    return out_file(out, force=force, expected="a file path for the profile YAML")


# Shape fields of Hugging Face configs (top level, or nested text/LLM/vision/backbone configs) that
# must be positive integers before transformers builds anything from them.
_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "vocab_size", "head_dim", "depth", "num_heads", "out_hidden_size",
                 "patch_size", "image_size", "spatial_merge_size", "temporal_patch_size")
_NESTED = ("text_config", "llm_config", "vision_config", "backbone_config")


def check_config_shapes(config: dict, where: str, *, prefix: str = "", depth: int = 0) -> None:
    """Positive integer widths, layers and vocabulary (an int or a square [n, n] pair for sizes)."""
    for key in _SHAPE_FIELDS:
        if key not in config or config[key] is None:
            continue
        value = config[key]
        items = value if isinstance(value, list) and key in ("patch_size", "image_size") else [value]
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31 for v in items):
            raise InputError(f"{where}: {prefix}{key}={shown(value)}: expected a positive integer")
    if depth < 3:
        for key in _NESTED:
            if isinstance(config.get(key), dict):
                check_config_shapes(config[key], where, prefix=f"{prefix}{key}.", depth=depth + 1)
            elif key in config and config[key] is not None:
                raise InputError(f"{where}: {prefix}{key}={shown(config[key])}: expected a mapping")


_T = TypeVar("_T")


def with_transformers(where: str, build: Callable[[], _T]) -> _T:
    """``build()``, with transformers' own failures on a bad config turned into an InputError about ``where``."""
    try:
        return build()
    except InputError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, OverflowError) as error:
        reason = " ".join(str(error).split())[:160]
        raise InputError(f"{where}: transformers cannot build a model from this config "
                         f"({type(error).__name__}: {reason})") from None


def _render(profile, measured=None) -> None:
    """Parameters per component and module kind (formula; instantiated beside it after an import)."""
    from rich.table import Table

    from memplan.integrations.huggingface import counts_table_rows

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
    *,
    config: Path = typer.Argument(..., help="A Hugging Face config.json (no weights are read or downloaded)."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name (default: the config's folder name)."),
    out: Optional[Path] = typer.Option(None, "--out", help=_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
) -> None:
    """Import CONFIG: map it to memplan's specs, check the counts against the transformers model
    instantiated on the meta device, and write the profile."""
    from memplan.integrations import huggingface as hf_import

    name = name or hf_import.default_name(config)
    path = _out_path(out, force)
    document = read_document(config)
    check_config_shapes(document, str(config))
    result = with_transformers(str(config), lambda: hf_import.inspect_config(config, name))
    _render(result.profile, result.measured)
    _emit(result.profile, path, checked=f" (counts equal the instantiated {result.model_class})")


@profile_app.command("compose")
@user_errors
def compose_command(
    *,
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
    from memplan.integrations import huggingface as hf_import

    profile = hf_import.compose(vision=vision, projector=projector, llm=llm, sam2=sam2, seg_head=seg_head, name=name)
    path = _out_path(out, force)
    _render(profile)
    _emit(profile, path)


def _emit(profile, path: Optional[Path], *, checked: str = "") -> None:
    """Write the profile to --out, or print its YAML and write nothing."""
    from memplan.integrations import huggingface as hf_import

    if path is None:
        typer.echo(hf_import.profile_yaml(profile), nl=False)
        typer.echo(f"nothing written{checked}; --out {profile.name}.yaml writes it, then: "
                   f"memplan estimate -m {profile.name}.yaml")
        return
    hf_import.write_profile(profile, path, overwrite=True)
    typer.echo(f"wrote {path}{checked}; use it: memplan estimate -m {path}")
