"""memplan's command line: thin wrappers that parse, call a pure function and render."""

from __future__ import annotations

from typing import Optional
from pathlib import Path

import typer

from memplan.spec.vocabulary import Verdict
from memplan.cli.options import (CALIBRATION, DATASET, EMIT, EMIT_FSDP, EXIT_CODE, FORCE_EMIT, MODEL, PLAN, SCRIPT, WIDE,
                                 OneLineErrors, OutputFormat, console, plan_flags, user_errors)
from memplan.cli.outputs import emit_deepspeed

app = typer.Typer(
    cls=OneLineErrors,
    help="Peak-VRAM planner and feasibility checker for fine-tuning multimodal models (Sa2VA and kin).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)

def _print_version(value: bool) -> None:
    if value:
        import memplan  # the package's own __version__ (not a sub-package import)

        typer.echo(f"memplan {memplan.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print memplan's version and exit.",
                                       callback=_print_version, is_eager=True)) -> None:
    """Peak-VRAM planner and feasibility checker for fine-tuning multimodal models (Sa2VA and kin)."""


@app.command()
@user_errors
@plan_flags("gpus", "nodes", "vram", "gpu", "host_ram", "res", "zero", "engine", "offload", "lora_rank", "tiles", "frames", "text_len",
            "micro_batch", "objects", "ckpt", "mode", "stack", "attention", "adapter_dtype", "allocator")
def estimate(
    *,
    model: Optional[str] = MODEL,
    plan: Optional[str] = PLAN,
    calibration: Optional[str] = CALIBRATION,
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table, json or md."),
    emit_deepspeed_to: Optional[Path] = EMIT,
    emit_fsdp_to: Optional[Path] = EMIT_FSDP,
    force: bool = FORCE_EMIT,
    script: str = SCRIPT,
    dataset_samples: Optional[int] = DATASET,
    wide: bool = WIDE,
    exit_code: bool = EXIT_CODE,
    flags: dict,
) -> None:
    """Estimate the peak memory per GPU of one plan, say whether it fits, and if not what to change."""
    from memplan.cli.host import host_ram_choice
    from memplan.cli.names import resolve_profile
    from memplan.integrations.deepspeed import check_emittable
    from memplan.planning.evaluate import evaluate
    from memplan.report import render, story
    from memplan.report.steps import step_line, with_step_json
    from memplan.spec.flags import check_against_profile, plan_from_flags
    from memplan.spec.loading import load_calibration

    host_ram, host_note = host_ram_choice(flags["host_ram"], plan)
    the_plan = plan_from_flags(plan, **{**flags, "host_ram": host_ram})
    profile = resolve_profile(model, the_plan)
    check_against_profile(profile, the_plan)
    if emit_deepspeed_to is not None:
        check_emittable(the_plan, the_plan.name)
    if emit_fsdp_to is not None:
        from memplan.cli.emit_fsdp import check_targets
        from memplan.integrations.accelerate_fsdp import accelerate_plan, check_fsdp_plan

        check_fsdp_plan(the_plan, the_plan.name)
        check_targets(emit_fsdp_to, force=force)
        the_plan = accelerate_plan(the_plan)  # estimate what accelerate will run
    evaluation = evaluate(profile, the_plan, calibration=load_calibration(calibration), reference=the_plan,
                          with_advice=True, with_sinks=True)  # advice when it does not fit clear of the band
    result, step, advice = evaluation.estimate, evaluation.step, evaluation.advice
    advice_lines = story.advice_lines(advice) if advice else []
    if output_format is OutputFormat.json:
        document = render.estimate_json(result, {"host_ram_source": host_note,
                                                 "advice": story.advice_json(advice) if advice else [],
                                                 "settle": advice.settle.to_dict() if advice and advice.settle else None})
        typer.echo(with_step_json(render.with_stack_json(document, stack=evaluation.stack, sinks=evaluation.sinks),
                                  step, dataset_samples))
    elif output_format is OutputFormat.md:
        typer.echo(render.estimate_markdown(result, advice=advice_lines, host_note=host_note)
                   + render.sinks_markdown(evaluation.stack, evaluation.sinks)
                   + f"\n{step_line(step, dataset_samples)}\n", nl=False)
    else:
        out = console()
        out.print(render.estimate_table(result, width=out.width, wide=wide, advice=advice_lines, host_note=host_note))
        out.print(render.sinks_text(evaluation.stack, evaluation.sinks))
        out.print(step_line(step, dataset_samples))
    if emit_deepspeed_to is not None:
        if result.verdict is not Verdict.FITS:
            typer.echo(f"warning: {the_plan.name} does not fit ({result.verdict.value}); the config is written anyway",
                       err=True)
        emit_deepspeed(the_plan, model=model or the_plan.model or profile.name, name=the_plan.name,
                       target=emit_deepspeed_to, script=script, vram_gib=the_plan.hardware.vram_gib)
    if emit_fsdp_to is not None:
        from memplan.cli.emit_fsdp import emit_fsdp

        if result.verdict is not Verdict.FITS:
            typer.echo(f"warning: {the_plan.name} does not fit ({result.verdict.value}); the config is written anyway",
                       err=True)
        emit_fsdp(profile, the_plan, model=model or the_plan.model or profile.name, target=emit_fsdp_to, script=script,
                  force=force)
    if exit_code and not evaluation.fits:
        raise typer.Exit(code=1)


@app.command("profiles")
@user_errors
def list_profiles(output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
                  wide: bool = WIDE) -> None:
    """List shipped profiles with their parameter counts per component."""
    import json

    from memplan.report.profiles_table import profiles_table
    from memplan.spec.loading import load_profile, profile_names

    rows = []
    for name in profile_names():
        profile = load_profile(name)
        rows.append({"name": name, "total_params": profile.param_count(), "components": profile.component_params(),
                     "description": profile.description})
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    out = console()
    out.print(profiles_table(rows, width=out.width, wide=wide))


from memplan.cli import calibrate_cmd, protocol_cmd  # noqa: E402
from memplan.cli.compare_cmd import compare  # noqa: E402
from memplan.cli.probe import probe_command  # noqa: E402
from memplan.cli.replay_cmd import replay  # noqa: E402
from memplan.cli.scan_cmd import scan  # noqa: E402
from memplan.cli.profile_cmd import profile_app  # noqa: E402
from memplan.cli.search_cmd import search  # noqa: E402

app.command("compare")(compare)
app.command("search")(search)
app.command("probe")(probe_command)
app.command("replay")(replay)
app.command("calibrate")(calibrate_cmd.calibrate)
app.command("validate")(calibrate_cmd.validate)
app.command("predict")(protocol_cmd.predict)
app.command("score")(protocol_cmd.score)
app.command("scan")(scan)
app.add_typer(profile_app, name="profile", help="Import a Hugging Face config.json or compose a profile.")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
