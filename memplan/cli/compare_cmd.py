"""`memplan compare` and `memplan search`: plans side by side, and the Pareto front of a search.

Both print the report in --format (table, md, html, json, csv); only with --out DIR do they write
it there: compare.<ext> or search.<ext>, with two PNG charts (memory by category, phase timeline)
for table, md and html (matplotlib; skipped with a note when missing). Files that exist are kept
unless --force. The table adapts to the terminal width (--wide: every column); --exit-code exits 1
when no plan fits. --emit-deepspeed FILE writes
the DeepSpeed config of the plan picked with --choose NAME|INDEX and prints its launch command.
Registered in memplan/cli/main.py as `app.command("compare")(compare)` and `app.command("search")(search)`.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from memplan.cli.options import (DEFAULT_PLAN, GPU_HELP, VRAM_HELP, build_plan, check_lora_rank, console, fail, resolve_profile,
                                  user_errors)
from memplan.spec.loading import PLANS_DIR, InputError

SEED_DIR = PLANS_DIR / "seed"
SEED_PLANS = ("baseline", "plan-a", "plan-b", "plan-c", "plan-d")


class ReportFormat(str, Enum):
    table = "table"
    md = "md"
    html = "html"
    json = "json"
    csv = "csv"


EXTENSIONS = {ReportFormat.table: "md", ReportFormat.md: "md", ReportFormat.html: "html",
              ReportFormat.json: "json", ReportFormat.csv: "csv"}

MODEL = typer.Option(None, "--model", "-m", help="Profile name or path; overrides each plan's own model.")
GPU = typer.Option(None, "--gpu", help=GPU_HELP)
FORMAT = typer.Option(ReportFormat.table, "--format", "-f", help="table, md, html, json or csv.")
OUT = typer.Option(None, "--out", help="Write the report and its charts into this folder (default: print only).")
FORCE = typer.Option(False, "--force", help="Overwrite report files that exist in --out.")
WIDE = typer.Option(False, "--wide", help="Every column, whatever the terminal width.")
EXIT_CODE = typer.Option(False, "--exit-code", help="Exit 1 when no plan fits (for CI).")
EMIT = typer.Option(None, "--emit-deepspeed", help="Write the chosen plan's DeepSpeed config (JSON) to this file.")
CHOOSE = typer.Option(None, "--choose", help="Plan for --emit-deepspeed: a name or a 1-based row number.")
DATASET = typer.Option(None, "--dataset-samples", help="Samples in one epoch: adds time per epoch.", min=1)
PRICE = typer.Option(None, "--price", help="Price per GPU-hour (with --dataset-samples: cost per epoch).", min=0)
SCRIPT = typer.Option("train.py", "--script", help="Training script named in the printed launch command.")
CALIBRATION = typer.Option(None, "--calibration", help="Calibration file (default profiles/calibration.yaml).")


def _plan_path(argument: str) -> str:
    """A plan argument: a file path, a name under plans/, or a seed plan's name (plan-a)."""
    path = Path(argument)
    if path.exists() or path.suffix in (".yaml", ".yml", ".json"):
        return argument
    for folder in (PLANS_DIR, SEED_DIR):
        if (folder / f"{argument}.yaml").exists():
            return str(folder / f"{argument}.yaml")
    known = sorted([p.stem for p in PLANS_DIR.glob("*.yaml")] + [p.stem for p in SEED_DIR.glob("*.yaml")])
    raise InputError(f"plan={argument!r}: no such file or plan name; known plans: {', '.join(known)}")


def _with_gpu(plan, gpu_name: str | None, vram: float | None = None):
    """The plan on another catalogued card: its name, and its VRAM unless given."""
    from memplan.spec.gpus import get_gpu

    if gpu_name is None:
        return plan
    spec = get_gpu(gpu_name)
    from memplan.spec.cards import check_vram

    check_vram(gpu=spec.name, vram_gib=vram if vram is not None else spec.vram_gib)
    hardware = plan.hardware.model_copy(update={"gpu": spec.name, "vram_gib": vram if vram is not None else spec.vram_gib})
    return plan.model_copy(update={"hardware": hardware})


def _step_note(calibration) -> str:
    """Where the step times come from: the calibrated mechanistic model, and how to see its terms."""
    from memplan.planning.steptime import default_terms

    terms = calibration.step_time if calibration is not None and calibration.step_time else default_terms()
    fitted = (f"terms fitted on {terms.records} probe runs ({', '.join(k for k in terms.efficiency if k != 'default')})"
              if terms.records else "literature defaults (not fitted)")
    return (f"step time: memplan.planning.steptime, per rank from mechanisms (compute per kernel class, framework "
            f"calls, ZeRO-3 gathers, collectives, offload copies, CPU Adam); {fitted}; the terms of every plan are "
            f"in --format json (step_breakdown_seconds); docs/benchmarks.md has its measured accuracy")


def _print_only(report, output_format: ReportFormat, extra_json: dict | None, wide: bool) -> None:
    """No --out: the report on stdout, nothing written."""
    from memplan.report import compare as render

    if output_format is ReportFormat.table:
        out = console()
        out.print(render.report_table(report, width=out.width, wide=wide))
        typer.echo("(nothing written; --out DIR writes the report and its charts)")
        return
    text = {ReportFormat.md: lambda: render.report_markdown(report), ReportFormat.html: lambda: render.report_html(report),
            ReportFormat.json: lambda: render.report_json(report, extra_json),
            ReportFormat.csv: lambda: render.report_csv(report)}[output_format]()
    typer.echo(text, nl=not text.endswith("\n"))


def _refuse_existing(out: Path, names: list[str], force: bool) -> None:
    existing = [name for name in names if (out / name).exists()]
    if existing and not force:
        fail(f"--out={out}: {', '.join(existing)} exist; pass --force to overwrite")


def _write_outputs(report, output_format: ReportFormat, out: Path | None, extra_json: dict | None = None, *,
                   force: bool = False, wide: bool = False) -> list[str]:
    """Print the report in ``output_format``; with ``out``, write it (and charts) there; return notes."""
    from memplan.report import charts
    from memplan.report import compare as render

    if out is None:
        _print_only(report, output_format, extra_json, wide)
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
        for title, (file_name, png) in rendered_charts.items():
            (out / file_name).write_bytes(png)
            written.append(str(out / file_name))
    ext = EXTENSIONS[output_format]
    target = out / f"{report.kind}.{ext}"
    if output_format is ReportFormat.html:
        text = render.report_html(report, {t: png for t, (_, png) in rendered_charts.items()})
    elif output_format is ReportFormat.json:
        text = render.report_json(report, extra_json)
    elif output_format is ReportFormat.csv:
        text = render.report_csv(report)
    else:
        text = render.report_markdown(report, {t: name for t, (name, _) in rendered_charts.items()})
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


def _choose(rows, choose: str | None, default_index: int | None):
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


def check_emittable(plan, name: str) -> None:
    """A DeepSpeed training config exists only for mode=train on engine.kind=deepspeed (else exit 2)."""
    if plan.mode != "train":
        fail(f"--emit-deepspeed: plan {name!r} is mode={plan.mode}; a DeepSpeed training config needs mode=train")
    if plan.engine.kind != "deepspeed":
        fail(f"--emit-deepspeed: plan {name!r} uses engine.kind={plan.engine.kind}, not deepspeed")


def _emittable(row):
    check_emittable(row.plan, row.name)
    return row


def plan_path_for(config: Path) -> Path:
    """Where --emit-deepspeed puts the plan beside its config: ds.json -> ds.plan.yaml."""
    return config.with_name(config.stem + ".plan.yaml")


def _emit(row, target: Path, script: str, vram_gib: float | None = None, model: str | None = None) -> None:
    emit_config(row.plan, model or row.profile.name, row.name, target, script, vram_gib)


def emit_config(plan, model: str, name: str, target: Path, script: str, vram_gib: float | None = None) -> None:
    """Write the DeepSpeed config and, beside it, the plan it was made for; print the launch line and
    the probe line that checks the pair on a real (or capped) card."""
    import yaml

    from memplan.integrations.deepspeed import deepspeed_config, launch_command, launch_comment

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(deepspeed_config(plan), indent=2) + "\n", encoding="utf-8")
        plan_file = plan_path_for(target)
        plan_data = plan.model_copy(update={"model": model}).model_dump(mode="json")
        plan_file.write_text(f"# memplan plan {name}: the plan {target.name} was emitted for\n"
                             + yaml.safe_dump(plan_data, sort_keys=False), encoding="utf-8")
    except OSError as error:
        fail(f"--emit-deepspeed={target}: cannot write ({error.strerror or error})")
    typer.echo(f"wrote {target} (DeepSpeed config of {name}) and {plan_file}", err=True)
    typer.echo(launch_comment())
    typer.echo(launch_command(plan, script, args=f"--deepspeed {target}"))
    cap = f" --vram-cap {vram_gib:g}" if vram_gib else ""
    typer.echo(f"check it: memplan probe --plan {plan_file} --deepspeed-config {target}{cap}", err=True)


@user_errors
def compare(
    plans: Optional[list[str]] = typer.Argument(None, help="Plan files or names (default: plans/seed baseline and plans A-D)."),
    model: Optional[str] = MODEL,
    gpu: Optional[str] = GPU,
    calibration: Optional[str] = CALIBRATION,
    output_format: ReportFormat = FORMAT,
    out: Optional[Path] = OUT,
    force: bool = FORCE,
    wide: bool = WIDE,
    exit_code: bool = EXIT_CODE,
    emit_deepspeed: Optional[Path] = EMIT,
    choose: Optional[str] = CHOOSE,
    script: str = SCRIPT,
    dataset_samples: Optional[int] = DATASET,
    price: Optional[float] = PRICE,
) -> None:
    """Compare plans side by side: peak per GPU, verdict, host RAM, step time, what each gives up, advice."""
    from memplan.spec.loading import load_calibration
    from memplan.report.compare import Report, build_rows

    arguments = plans or [str(SEED_DIR / f"{name}.yaml") for name in SEED_PLANS]
    entries = []
    for argument in arguments:
        plan = _with_gpu(build_plan(_plan_path(argument)), gpu)
        profile = resolve_profile(model, plan)
        check_lora_rank(profile, plan)
        entries.append((profile, plan))
    reference = build_plan(DEFAULT_PLAN)
    cal = load_calibration(calibration)
    rows = build_rows(entries, reference, cal, dataset_samples, price)
    first = rows[0]
    title = (f"memplan compare: {len(rows)} plans ({', '.join(sorted({r.profile.name for r in rows}))}); "
             f"step time and slowdown against {first.name}")
    notes = [f"gives up: against the official recipe ({DEFAULT_PLAN}: SAM2 {reference.inputs.sam2_resolution}, "
             f"LoRA r{reference.components.llm.lora.rank if reference.components.llm.lora else '-'}, mask decoder trained) "
             f"on the same model",
             _step_note(cal),
             "peak: what the card must hold, GiB per GPU (allocated + what the allocator cannot give back under "
             "pressure + CUDA context + NCCL: what an OOM is decided against; docs/methodology.md)"]
    same = [r.name for r in rows[1:] if r.plan.mode == first.plan.mode
            and abs(r.estimate.needed_bytes - first.estimate.needed_bytes) < 0.1 * 1024**3]
    if same:
        notes.append(f"{', '.join(same)}: peak within 0.1 GiB of {first.name}'s: what they change is not at the peak "
                     f"moment ({first.estimate.peak_phase.value}: {first.estimate.peak.moment.label})")
    report = Report(title, rows, DEFAULT_PLAN, notes, kind="compare")
    chosen = None
    if emit_deepspeed is not None:  # refuse a bad choice before writing anything
        default = next((i for i, r in enumerate(rows) if r.fits and r.plan.mode == "train"), None)
        chosen = _emittable(_choose(rows, choose, default))
    _write_outputs(report, output_format, out, force=force, wide=wide)
    if chosen is not None:
        _emit(chosen, emit_deepspeed, script, chosen.plan.hardware.vram_gib, model)
    if exit_code and not any(row.fits for row in rows):
        raise typer.Exit(code=1)


@user_errors
def search(
    gpus: int = typer.Option(..., "--gpus", help="Number of GPUs (data parallel; per node with --engines).", min=1, max=1024),
    engines: bool = typer.Option(False, "--engines", help="Compare ZeRO-1/2/3 and FSDP2/HSDP (with and without "
                                 "offload) on 1..--max-nodes nodes of --gpus GPUs instead of searching knobs."),
    max_nodes: int = typer.Option(64, "--max-nodes", help="Largest node count of --engines.", min=1, max=4096),
    vram: Optional[float] = typer.Option(None, "--vram", help=VRAM_HELP + " Default: the --gpu card's."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Profile name or path (default: the plan's, else sa2va-4b)."),
    plan: Optional[str] = typer.Option(None, "--plan", "-p", help="Base plan (default: the official recipe)."),
    gpu: Optional[str] = GPU,
    host_ram: Optional[float] = typer.Option(None, "--host-ram", help="Host RAM of the node in GiB (default: the plan's)."),
    top: int = typer.Option(10, "--top", help="Show at most this many plans of the front (most faithful first).", min=1),
    calibration: Optional[str] = CALIBRATION,
    output_format: ReportFormat = FORMAT,
    out: Optional[Path] = OUT,
    force: bool = FORCE,
    wide: bool = WIDE,
    exit_code: bool = EXIT_CODE,
    emit_deepspeed: Optional[Path] = EMIT,
    choose: Optional[str] = CHOOSE,
    script: str = SCRIPT,
    dataset_samples: Optional[int] = DATASET,
    price: Optional[float] = PRICE,
) -> None:
    """Search ZeRO stage, offload, checkpointing, micro-batch, SAM2 resolution, LoRA rank, decoder freezing,
    buckets and overlap for the plans that fit; print the Pareto front of time per sample vs fidelity."""
    from memplan.spec.gpus import get_gpu
    from memplan.spec.loading import load_calibration
    from memplan.report.compare import Report, build_row
    from memplan.planning.search import search as run_search
    from memplan.spec.units import format_gib

    if vram is None and gpu is None:
        fail("search: give --vram GIB or --gpu NAME (whose VRAM is then used)")
    if vram is not None and not (0 < vram < 4096):
        fail(f"--vram={vram}: must be a finite number of GiB in (0, 4096)")
    if host_ram is not None and not (0 < host_ram < 2**40):
        fail(f"--host-ram={host_ram}: must be a finite positive number of GiB")
    from memplan.cli.host import host_ram_choice

    spec = get_gpu(gpu) if gpu else None
    vram_gib = vram if vram is not None else spec.vram_gib
    from memplan.spec.cards import check_vram

    check_vram(gpu=spec.name if spec else None, vram_gib=vram_gib)
    host_ram, host_note = host_ram_choice(host_ram, _plan_path(plan) if plan else None)
    base = build_plan(_plan_path(plan) if plan else None)
    profile = resolve_profile(model, base)
    check_lora_rank(profile, base)
    cal = load_calibration(calibration)
    if engines:
        from memplan.cli.scale_cmd import engines_search

        return engines_search(profile, base, gpus_per_node=gpus, vram_gib=vram_gib, max_nodes=max_nodes, gpu=spec,
                              calibration=cal, output_format=output_format, out=out)
    result = run_search(profile, base, gpus, vram_gib, host_ram_gib=host_ram, gpu=spec, calibration=cal)
    stats = result.stats
    hardware = result.base_plan.hardware
    assumed = "" if (spec or base.hardware.gpu) else " (nearest catalogued VRAM; pass --gpu)"
    notes = [
        f"{stats.evaluated:,} candidates evaluated in {stats.seconds:.2f} s: step time and fidelity for every one; "
        f"{stats.estimated:,} full memory estimates, {stats.proven_oom:,} proven OOM by a smaller OOM candidate, "
        f"{stats.proven_fit:,} proven to fit by a larger fitting one, {stats.dominated:,} unable to join the front "
        f"(a faster feasible plan is at least as faithful)",
        f"hardware: {gpus} x {vram_gib:g} GiB {result.gpu.name}{assumed}, host RAM {hardware.host_ram_gib:g} GiB "
        f"({host_note}); "
        f"model {profile.name}; base plan {result.base_plan.name}",
        "fidelity: 0.45 SAM2 resolution + 0.25 LoRA rank (log) + 0.25 mask decoder trained + 0.05 micro-batch, "
        "against the base plan (memplan/planning/fidelity.py); time per sample = step time / micro-batch",
        _step_note(cal),
    ]
    if not result.front:
        smallest = result.smallest
        e = smallest.estimate
        lead = e.dominant(1)[0]
        host = (f"; host RAM {format_gib(e.host_bytes)} of {format_gib(e.host_ram_bytes)} GiB"
                if not e.host_fits else "")
        typer.echo(
            f"no plan fits on {gpus} x {vram_gib:g} GiB: the smallest achievable peak is {format_gib(e.needed_bytes)} GiB "
            f"per GPU ({smallest.name}) at {e.peak_phase.value} ({e.peak.moment.label}), "
            f"dominated by {lead.component.value} {lead.category.value} {format_gib(lead.bytes)} GiB{host}")
        typer.echo(notes[0])
        if output_format is ReportFormat.json:
            typer.echo(json.dumps({"fits": False, "evaluated": stats.evaluated, "smallest_device_bytes": e.device_bytes, "smallest_needed_bytes": e.needed_bytes,
                                   "smallest_plan": smallest.name, "dominant": {"component": lead.component.value,
                                   "category": lead.category.value, "bytes": lead.bytes}}, indent=2))
        if exit_code:
            raise typer.Exit(code=1)
        return
    front = sorted(result.front, key=lambda c: -c.fidelity)[:top]
    fastest = min(c.seconds_per_sample for c in result.front)
    rows = [build_row(profile, c.plan, result.base_plan, cal, fastest, c.estimate, c.step, c.knobs.to_dict(),
                      with_advice=False, dataset_samples=dataset_samples, price=price) for c in front]
    if len(result.front) > top:
        notes.append(f"front has {len(result.front)} plans; showing the {top} most faithful (--top)")
    title = (f"memplan search: Pareto front of {len(result.front)} plans for {profile.name} on {gpus} x {vram_gib:g} GiB "
             f"(most faithful first; slowdown against the fastest)")
    from memplan.estimate.peak import estimate as run_estimate

    base_needed = run_estimate(profile, result.base_plan, cal).needed_bytes
    report = Report(title, rows, result.base_plan.name, notes, kind="search", baseline_needed_bytes=base_needed)
    extra = {"evaluated": stats.evaluated, "estimated": stats.estimated, "proven_oom": stats.proven_oom,
             "proven_fit": stats.proven_fit, "dominated": stats.dominated, "seconds": round(stats.seconds, 3)}
    chosen = _emittable(_choose(rows, choose, 0)) if emit_deepspeed is not None else None
    _write_outputs(report, output_format, out, extra, force=force, wide=wide)
    if chosen is not None:
        _emit(chosen, emit_deepspeed, script, vram_gib, model)


def main() -> None:  # pragma: no cover - the lead registers these in memplan/cli/main.py
    app = typer.Typer(add_completion=False)
    app.command("compare")(compare)
    app.command("search")(search)
    app(sys.argv[1:])
