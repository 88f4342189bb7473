"""memplan's command line: thin wrappers that parse, call a pure function and render."""

from __future__ import annotations

from typing import Optional
from pathlib import Path

import typer

from memplan.spec.vocabulary import Verdict
from memplan.cli.options import (ADAPTER_DTYPE, ATTENTION, GPU_HELP, STACK, VRAM_HELP, OneLineErrors, console, OffloadChoice,
                                  OutputFormat, build_plan, check_lora_rank, resolve_profile, user_errors)

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
        from memplan import __version__

        typer.echo(f"memplan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print memplan's version and exit.",
                                       callback=_print_version, is_eager=True)) -> None:
    """Peak-VRAM planner and feasibility checker for fine-tuning multimodal models (Sa2VA and kin)."""

MODEL = typer.Option(None, "--model", "-m", help="Profile name (see `memplan profiles`) or path; default sa2va-4b.")
PLAN = typer.Option(None, "--plan", "-p", help="Plan YAML/JSON file (flags override it).")


@app.command()
@user_errors
def estimate(
    model: Optional[str] = MODEL,
    plan: Optional[str] = PLAN,
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs per node (data parallel; num_gpus = nodes x gpus)."),
    nodes: Optional[int] = typer.Option(None, "--nodes", help="Nodes (hosts) of --gpus GPUs each; default 1."),
    vram: Optional[float] = typer.Option(None, "--vram", help=VRAM_HELP),
    gpu: Optional[str] = typer.Option(None, "--gpu", help=GPU_HELP),
    host_ram: Optional[float] = typer.Option(None, "--host-ram", help="Host RAM of the node in GiB."),
    res: Optional[int] = typer.Option(None, "--res", help="SAM2 input resolution (pixels)."),
    zero: Optional[int] = typer.Option(None, "--zero", help="DeepSpeed ZeRO stage 0-3."),
    engine: Optional[str] = typer.Option(None, "--engine", help="deepspeed, pytorch or fsdp2."),
    offload: Optional[OffloadChoice] = typer.Option(
        None, "--offload", help="none | optimizer | all (params too, ZeRO-3; FSDP2: CPUOffloadPolicy)."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="LoRA rank of the LLM."),
    tiles: Optional[int] = typer.Option(None, "--tiles", help="448px tiles per image (InternVL: up to 12 + thumbnail)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Video frames (one tile each)."),
    text_len: Optional[int] = typer.Option(None, "--text-len", help="LLM sequence length in tokens (image tokens included)."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Samples per GPU per step."),
    objects: Optional[int] = typer.Option(None, "--objects", help="Masks per sample through the SAM2 decoder."),
    ckpt: Optional[bool] = typer.Option(None, "--ckpt/--no-ckpt", help="Gradient checkpointing of the LLM."),
    mode: Optional[str] = typer.Option(None, "--mode", help="train or inference."),
    stack: Optional[str] = STACK,
    attention: Optional[str] = ATTENTION,
    adapter_dtype: Optional[str] = ADAPTER_DTYPE,
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration file (default profiles/calibration.yaml)."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table, json or md."),
    emit_deepspeed: Optional[Path] = typer.Option(
        None, "--emit-deepspeed", help="Write this plan's DeepSpeed config (JSON) to FILE, and the plan beside it."),
    emit_fsdp: Optional[Path] = typer.Option(
        None, "--emit-fsdp", help="Write this FSDP2 plan's accelerate config (YAML) to FILE, and the plan beside it."),
    force: bool = typer.Option(False, "--force", help="Overwrite files --emit-fsdp would write."),
    script: str = typer.Option("train.py", "--script", help="Training script named in the printed launch command."),
    dataset_samples: Optional[int] = typer.Option(None, "--dataset-samples", help="Samples in one epoch: adds time per epoch.", min=1),
    wide: bool = typer.Option(False, "--wide", help="Every column, whatever the terminal width."),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when the plan does not fit (GPU or host RAM), for CI."),
) -> None:
    """Estimate the peak memory per GPU of one plan, say whether it fits, and if not what to change."""
    from memplan.cli.host import host_ram_choice
    from memplan.estimate.peak import estimate as run_estimate
    from memplan.planning.sinks import find_sinks, stack_summary
    from memplan.spec.loading import load_calibration
    from memplan.report import render, story

    host_ram, host_note = host_ram_choice(host_ram, plan)
    the_plan = build_plan(plan, gpus=gpus, nodes=nodes, vram=vram, gpu=gpu, host_ram=host_ram, res=res, zero=zero, engine=engine,
                          offload=offload, lora_rank=lora_rank, tiles=tiles, frames=frames, text_len=text_len,
                          micro_batch=micro_batch, objects=objects, ckpt=ckpt, mode=mode, stack=stack,
                          attention=attention, adapter_dtype=adapter_dtype)
    profile = resolve_profile(model, the_plan)
    check_lora_rank(profile, the_plan)
    if emit_deepspeed is not None:
        from memplan.cli.compare_cmd import check_emittable

        check_emittable(the_plan, the_plan.name)
    if emit_fsdp is not None:
        from memplan.cli.emit_fsdp import check_targets, emit_fsdp as write_fsdp
        from memplan.integrations.accelerate_fsdp import accelerate_plan, check_fsdp_plan

        check_fsdp_plan(the_plan, the_plan.name)
        check_targets(emit_fsdp, force=force)
        the_plan = accelerate_plan(the_plan)  # estimate what accelerate will run
    calibration_terms = load_calibration(calibration)
    result = run_estimate(profile, the_plan, calibration_terms)
    sinks = find_sinks(profile, the_plan, calibration=calibration_terms)
    stack_info = stack_summary(profile, the_plan)
    fits = result.verdict is Verdict.FITS and result.host_fits
    advice = None if fits else _advice(profile, the_plan, calibration_terms, result)
    advice_lines = story.advice_lines(advice) if advice else []
    from memplan.planning.steptime import step_time
    from memplan.report.steps import step_line, with_step_json

    step = step_time(profile, the_plan, terms=calibration_terms.step_time)
    if output_format is OutputFormat.json:
        document = render.estimate_json(result, {"host_ram_source": host_note,
                                                 "advice": story.advice_json(advice) if advice else []})
        typer.echo(with_step_json(render.with_stack_json(document, stack=stack_info, sinks=sinks), step, dataset_samples))
    elif output_format is OutputFormat.md:
        typer.echo(render.estimate_markdown(result, advice=advice_lines, host_note=host_note)
                   + render.sinks_markdown(stack_info, sinks) + f"\n{step_line(step, dataset_samples)}\n", nl=False)
    else:
        out = console()
        out.print(render.estimate_table(result, width=out.width, wide=wide, advice=advice_lines, host_note=host_note))
        out.print(render.sinks_text(stack_info, sinks))
        out.print(step_line(step, dataset_samples))
    if emit_deepspeed is not None:
        from memplan.cli.compare_cmd import emit_config

        if result.verdict is not Verdict.FITS:
            typer.echo(f"warning: {the_plan.name} does not fit ({result.verdict.value}); the config is written anyway",
                       err=True)
        emit_config(the_plan, model or the_plan.model or profile.name, the_plan.name, emit_deepspeed, script, the_plan.hardware.vram_gib)
    if emit_fsdp is not None:
        if result.verdict is not Verdict.FITS:
            typer.echo(f"warning: {the_plan.name} does not fit ({result.verdict.value}); the config is written anyway",
                       err=True)
        write_fsdp(profile, the_plan, model=model or the_plan.model or profile.name, target=emit_fsdp, script=script,
                   force=force)
    if exit_code and not fits:
        raise typer.Exit(code=1)


def _advice(profile, plan, calibration, result):
    """The advice engine's changes for a plan that does not fit (memplan.planning.advice.advise)."""
    from memplan.planning.advice import advise

    return advise(profile, plan, calibration, result)


@app.command("profiles")
@user_errors
def list_profiles(output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
                  wide: bool = typer.Option(False, "--wide", help="Every column, whatever the terminal width.")) -> None:
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


from memplan.cli import calibrate_cmd, compare_cmd, protocol_cmd  # noqa: E402
from memplan.cli.probe import probe_command  # noqa: E402
from memplan.cli.profile_cmd import profile_app  # noqa: E402

app.command("compare")(compare_cmd.compare)
app.command("search")(compare_cmd.search)
app.command("probe")(probe_command)
app.command("calibrate")(calibrate_cmd.calibrate)
app.command("validate")(calibrate_cmd.validate)
app.command("predict")(protocol_cmd.predict)
app.command("score")(protocol_cmd.score)
app.add_typer(profile_app, name="profile", help="Import a Hugging Face config.json or compose a profile.")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
