"""`memplan search`: the Pareto front (time per sample vs fidelity) of the plans that fit, printed in
--format and written under --out (memplan.cli.outputs); --emit-deepspeed writes the chosen one's config."""

from __future__ import annotations

import json
from typing import Optional

import typer

from memplan.cli.options import ALLOCATOR, GPU, HOST_RAM, MODEL, PLAN, VRAM, fail, user_errors
from memplan.cli.outputs import ReportFormat, choose_row, emit_deepspeed, report_options, step_note, write_outputs
from memplan.cli.names import resolve_profile
from memplan.spec.flags import check_against_profile, plan_argument, plan_from_flags


def _stats_note(stats) -> str:
    return (f"{stats.candidates:,} candidates evaluated in {stats.seconds:.2f} s: step time and fidelity for every one; "
            f"{stats.estimated:,} full memory estimates, {stats.proven_oom:,} proven OOM by a smaller OOM candidate, "
            f"{stats.proven_fit:,} proven to fit by a larger fitting one, {stats.dominated:,} unable to join the front "
            f"(a faster feasible plan is at least as faithful)")


def _nothing_fits(result, *, gpus: int, vram_gib: float, output_format: ReportFormat, exit_code: bool) -> None:
    """The smallest achievable peak and what dominates it (text, and JSON with --format json)."""
    from memplan.spec.units import format_gib

    smallest = result.smallest
    e = smallest.estimate
    lead = e.dominant(1)[0]
    host = f"; host RAM {format_gib(e.host_bytes)} of {format_gib(e.host_ram_bytes)} GiB" if not e.host_fits else ""
    tight = (" (it fits only within the tight band: --allow-tight lists such plans)" if e.fits and e.tight else "")
    typer.echo(
        f"no plan fits on {gpus} x {vram_gib:g} GiB: the smallest achievable peak is {format_gib(e.needed_bytes)} GiB "
        f"per GPU ({smallest.name}){tight} at {e.peak_phase.value} ({e.peak.moment.label}), "
        f"dominated by {lead.component.value} {lead.category.value} {format_gib(lead.bytes)} GiB{host}")
    typer.echo(_stats_note(result.stats))
    if output_format is ReportFormat.json:
        typer.echo(json.dumps({"fits": False, "evaluated": result.stats.candidates, "smallest_device_bytes": e.device_bytes,
                               "smallest_needed_bytes": e.needed_bytes, "smallest_plan": smallest.name,
                               "dominant": {"component": lead.component.value, "category": lead.category.value,
                                            "bytes": lead.bytes}}, indent=2))
    if exit_code:
        raise typer.Exit(code=1)


@user_errors
@report_options
def search(
    *,
    gpus: int = typer.Option(..., "--gpus", help="Number of GPUs (data parallel; per node with --engines).", min=1, max=1024),
    engines: bool = typer.Option(False, "--engines", help="Compare ZeRO-1/2/3 and FSDP2/HSDP (with and without "
                                 "offload) on 1..--max-nodes nodes of --gpus GPUs instead of searching knobs."),
    max_nodes: int = typer.Option(64, "--max-nodes", help="Largest node count of --engines.", min=1, max=4096),
    vram: Optional[float] = VRAM,
    model: Optional[str] = MODEL,
    plan: Optional[str] = PLAN,
    gpu: Optional[str] = GPU,
    host_ram: Optional[float] = HOST_RAM,
    top: int = typer.Option(10, "--top", help="Show at most this many plans of the front (most faithful first).", min=1),
    allow_tight: bool = typer.Option(False, "--allow-tight", help="Count plans that fit only within the tight band "
                                     "(calibration tight_band of the card, too close to call; one capped `memplan probe` settles each)."),
    allocator: Optional[str] = ALLOCATOR,
    report: dict,
) -> None:
    """Search ZeRO stage, offload, checkpointing, micro-batch, SAM2 resolution, LoRA rank, decoder freezing,
    buckets and overlap for the plans that fit; print the Pareto front of time per sample vs fidelity."""
    from memplan.cli.host import host_ram_choice
    from memplan.integrations.deepspeed import check_emittable
    from memplan.planning.evaluate import evaluate, evaluate_front
    from memplan.planning.search import search as run_search
    from memplan.report.compare import Report
    from memplan.spec.cards import check_vram
    from memplan.spec.gpus import get_gpu
    from memplan.spec.loading import load_calibration

    if vram is None and gpu is None:
        fail("search: give --vram GIB or --gpu NAME (whose VRAM is then used)")
    if vram is not None and not (0 < vram < 4096):
        fail(f"--vram={vram}: must be a finite number of GiB in (0, 4096)")
    if host_ram is not None and not (0 < host_ram < 2**40):
        fail(f"--host-ram={host_ram}: must be a finite positive number of GiB")
    spec = get_gpu(gpu) if gpu else None
    vram_gib = vram if vram is not None else spec.vram_gib
    check_vram(gpu=spec.name if spec else None, vram_gib=vram_gib)
    host_ram, host_note = host_ram_choice(host_ram, plan_argument(plan) if plan else None)
    base = plan_from_flags(plan_argument(plan) if plan else None, allocator=allocator)
    profile = resolve_profile(model, base)
    check_against_profile(profile, base)
    output_format = report["output_format"]
    cal = load_calibration(report["calibration"])
    if engines:
        from memplan.cli.scale_cmd import engines_search

        engines_search(profile, base, gpus_per_node=gpus, vram_gib=vram_gib, max_nodes=max_nodes, gpu=spec,
                       calibration=cal, output_format=output_format, out=report["out"], force=report["force"],
                       wide=report["wide"])
        return
    result = run_search(profile, base, num_gpus=gpus, vram_gib=vram_gib, host_ram_gib=host_ram, gpu=spec, calibration=cal,
                        allow_tight=allow_tight)
    if not result.front:
        _nothing_fits(result, gpus=gpus, vram_gib=vram_gib, output_format=output_format, exit_code=report["exit_code"])
        return
    stats, hardware = result.stats, result.base_plan.hardware
    assumed = "" if (spec or base.hardware.gpu) else " (nearest catalogued VRAM; pass --gpu)"
    rows = evaluate_front(profile, result, calibration=cal, top=top, dataset_samples=report["dataset_samples"],
                          price=report["price"])
    notes = [
        _stats_note(stats),
        f"hardware: {gpus} x {vram_gib:g} GiB {result.gpu.name}{assumed}, host RAM {hardware.host_ram_gib:g} GiB "
        f"({host_note}); "
        f"model {profile.name}; base plan {result.base_plan.name}",
        "fidelity: 0.45 SAM2 resolution + 0.25 LoRA rank (log) + 0.25 mask decoder trained + 0.05 micro-batch, "
        "against the base plan (memplan/planning/fidelity.py); time per sample = step time / micro-batch",
        step_note(cal, rows=rows),
        (f"feasible: fits clear of the {cal.tight_band:.1%} tight band"
         + "".join(f" ({band:.1%} under {allocator})" for allocator, band in sorted(cal.tight_bands.items()))
         + " (--allow-tight counts the tight fits too)"
         if cal.tight_band and not allow_tight else "feasible: any fit (--allow-tight)"),
    ]
    if len(result.front) > top:
        notes.append(f"front has {len(result.front)} plans; showing the {top} most faithful (--top)")
    title = (f"memplan search: Pareto front of {len(result.front)} plans for {profile.name} on {gpus} x {vram_gib:g} GiB "
             f"(most faithful first; slowdown against the fastest)")
    extra = {"evaluated": stats.candidates, "estimated": stats.estimated, "proven_oom": stats.proven_oom,
             "proven_fit": stats.proven_fit, "dominated": stats.dominated, "seconds": round(stats.seconds, 3)}
    chosen = choose_row(rows, report["choose"], 0) if report["emit_deepspeed_to"] is not None else None
    if chosen is not None:
        check_emittable(chosen.plan, chosen.name)
    base_needed = evaluate(profile, result.base_plan, calibration=cal, reference=result.base_plan,
                           with_advice=False).estimate.needed_bytes
    write_outputs(Report(title, rows, result.base_plan.name, notes, kind="search", baseline_needed_bytes=base_needed),
                  output_format, report["out"], extra_json=extra, force=report["force"], wide=report["wide"])
    if chosen is not None:
        emit_deepspeed(chosen.plan, model=model or chosen.profile.name, name=chosen.name,
                       target=report["emit_deepspeed_to"], script=report["script"], vram_gib=vram_gib)
