"""`memplan compare`: plans side by side (peak per GPU, verdict, host RAM, step time, what each gives
up, advice), printed in --format and written under --out (memplan.cli.outputs)."""

from __future__ import annotations

from typing import Optional

import typer

from memplan.cli.options import ALLOCATOR, GPU, MODEL, user_errors
from memplan.cli.names import resolve_profile
from memplan.cli.outputs import choose_row, emit_deepspeed, report_options, step_note, write_outputs
from memplan.spec.flags import DEFAULT_PLAN, SEED_DIR, SEED_PLANS, check_against_profile, on_gpu, plan_argument, plan_from_flags


def _notes(rows, reference, calibration) -> list[str]:
    first = rows[0]
    notes = [f"gives up: against the official recipe ({DEFAULT_PLAN}: SAM2 {reference.inputs.sam2_resolution}, "
             f"LoRA r{reference.components.llm.lora.rank if reference.components.llm.lora else '-'}, mask decoder trained) "
             f"on the same model",
             step_note(calibration, rows=rows),
             "peak: what the card must hold, GiB per GPU (allocated + what the allocator cannot give back under "
             "pressure + CUDA context + NCCL: what an OOM is decided against; docs/methodology.md)"]
    same = [r.name for r in rows[1:] if r.plan.mode == first.plan.mode
            and abs(r.estimate.needed_bytes - first.estimate.needed_bytes) < 0.1 * 1024**3]
    if same:
        notes.append(f"{', '.join(same)}: peak within 0.1 GiB of {first.name}'s: what they change is not at the peak "
                     f"moment ({first.estimate.peak_phase.value}: {first.estimate.peak.moment.label})")
    return notes


@user_errors
@report_options
def compare(
    *,
    plans: Optional[list[str]] = typer.Argument(None, help="Plan files or names (default: plans/seed baseline and plans A-D)."),
    model: Optional[str] = MODEL,
    gpu: Optional[str] = GPU,
    allocator: Optional[str] = ALLOCATOR,
    report: dict,
) -> None:
    """Compare plans side by side: peak per GPU, verdict, host RAM, step time, what each gives up, advice."""
    from memplan.integrations.deepspeed import check_emittable
    from memplan.planning.evaluate import evaluate_side_by_side
    from memplan.report.compare import Report
    from memplan.spec.loading import load_calibration

    arguments = plans or [str(SEED_DIR / f"{name}.yaml") for name in SEED_PLANS]
    entries = []
    for argument in arguments:
        plan = on_gpu(plan_from_flags(plan_argument(argument), allocator=allocator), gpu)
        profile = resolve_profile(model, plan)
        check_against_profile(profile, plan)
        entries.append((profile, plan))
    reference = plan_from_flags(DEFAULT_PLAN)
    calibration = load_calibration(report["calibration"])
    rows = evaluate_side_by_side(entries, reference=reference, calibration=calibration,
                                 dataset_samples=report["dataset_samples"], price=report["price"])
    title = (f"memplan compare: {len(rows)} plans ({', '.join(sorted({r.profile.name for r in rows}))}); "
             f"step time and slowdown against {rows[0].name}")
    chosen = None
    if report["emit_deepspeed_to"] is not None:  # refuse a bad choice before writing anything
        default = next((i for i, r in enumerate(rows) if r.fits and r.plan.mode == "train"), None)
        chosen = choose_row(rows, report["choose"], default)
        check_emittable(chosen.plan, chosen.name)
    write_outputs(Report(title, rows, DEFAULT_PLAN, _notes(rows, reference, calibration), kind="compare"), report["output_format"],
                  report["out"], force=report["force"], wide=report["wide"])
    if chosen is not None:
        emit_deepspeed(chosen.plan, model=model or chosen.profile.name, name=chosen.name,
                       target=report["emit_deepspeed_to"], script=report["script"], vram_gib=chosen.plan.hardware.vram_gib)
    if report["exit_code"] and not any(row.fits for row in rows):
        raise typer.Exit(code=1)
