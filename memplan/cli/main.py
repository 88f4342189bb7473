"""memplan's command line: thin wrappers that parse, call a pure function and render."""

from __future__ import annotations

from typing import Optional
from pathlib import Path

import typer
from rich.table import Table

from memplan.spec.vocabulary import Verdict
from memplan.cli.options import (ADAPTER_DTYPE, ATTENTION, GPU_HELP, STACK, VRAM_HELP, OneLineErrors, console, OffloadChoice,
                                  OutputFormat, build_plan, check_lora_rank, resolve_profile, user_errors)

app = typer.Typer(
    cls=OneLineErrors,
    help="Peak-VRAM planner and feasibility checker for fine-tuning multimodal models (Sa2VA and kin).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
) -> None:
    """Estimate the peak memory per GPU of one plan, and say whether it fits."""
    from memplan.estimate.peak import estimate as run_estimate
    from memplan.planning.sinks import find_sinks, stack_summary
    from memplan.spec.loading import load_calibration
    from memplan.report import render

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
    the_calibration = load_calibration(calibration)
    result = run_estimate(profile, the_plan, the_calibration)
    sinks = find_sinks(profile, the_plan, calibration=the_calibration)
    stack_info = stack_summary(profile, the_plan)
    from memplan.planning.steptime import step_time
    from memplan.report.steps import step_line, with_step_json

    step = step_time(profile, the_plan, terms=the_calibration.step_time)
    if output_format is OutputFormat.json:
        typer.echo(with_step_json(render.with_stack_json(render.estimate_json(result), stack=stack_info, sinks=sinks),
                                  step, dataset_samples))
    elif output_format is OutputFormat.md:
        typer.echo(render.estimate_markdown(result) + render.sinks_markdown(stack_info, sinks)
                   + f"\n{step_line(step, dataset_samples)}\n", nl=False)
    else:
        console().print(render.estimate_table(result))
        console().print(render.sinks_text(stack_info, sinks))
        console().print(step_line(step, dataset_samples))
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


@app.command("profiles")
@user_errors
def list_profiles(output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f")) -> None:
    """List shipped profiles with their parameter counts per component."""
    import json

    from memplan.spec.loading import load_profile, profile_names

    rows = []
    for name in profile_names():
        profile = load_profile(name)
        rows.append({"name": name, "total_params": profile.param_count(), "components": profile.component_params(),
                     "description": profile.description})
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="memplan profiles (parameters)")
    for column in ("name", "total", "llm", "vision", "projector", "sam2", "seg head"):
        table.add_column(column, justify="left" if column == "name" else "right", no_wrap=True)
    table.add_column("description", overflow="ellipsis", no_wrap=True, max_width=70)

    def millions(count: int | None) -> str:
        return f"{count / 1e6:,.1f}M" if count else ""

    for row in rows:
        c = row["components"]
        sam2 = (c.get("sam2_encoder") or 0) + (c.get("sam2_decoder") or 0)
        table.add_row(row["name"], millions(row["total_params"]), millions(c.get("llm")), millions(c.get("vision")),
                      millions(c.get("projector")), millions(sam2), millions(c.get("seg_head")), row["description"])
    console().print(table)


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
