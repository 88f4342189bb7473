"""`memplan predict` and `memplan score`: the estimate of every planned run written before a batch runs,
and the runs scored against it afterwards (memplan.planning.protocol, memplan.planning.scoring)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from memplan.cli.options import OutputFormat, console, user_errors
from memplan.cli.names import resolve_profile
from memplan.spec.flags import check_against_profile, plan_from_flags
from memplan.planning.protocol import (PREDICTION_SCHEMA, PlannedRun, RunSet, calibration_hash, estimator_revision,
                                       load_runset, plan_fingerprint, read_predictions, resolve_plan_file)
from memplan.spec.loading import InputError


def planned_plan(runset: RunSet, run: PlannedRun, runset_path: Path):
    """The Plan a run is estimated with: its plan file and flags; a cap in GiB as the VRAM (no card),
    a cap naming a card as that card (its CUDA total, its family's context), no cap: the batch's card.
    The run's alloc_conf sets stack.allocator (expandable segments) unless its flags name one."""
    from memplan.spec.allocator import EXPANDABLE, allocator_of
    from memplan.spec.cards import parse_vram_cap

    cap = parse_vram_cap(run.vram_cap)
    if cap is None:
        hardware: dict[str, Any] = {"gpu": runset.card}
    elif cap.card is None:
        hardware = {"vram": cap.gib}
    else:
        hardware = {"gpu": cap.card}
    allocator = {"allocator": EXPANDABLE} if "allocator" not in run.flags and allocator_of(run.alloc_conf) == EXPANDABLE else {}
    return plan_from_flags(resolve_plan_file(runset_path, run.plan), gpus=run.gpus, **run.flags, **hardware, **allocator)


def predictions_for(runset: RunSet, runset_path: Path, calibration) -> list[dict[str, Any]]:
    """One prediction line per planned run (schema memplan.prediction/1)."""
    from datetime import datetime, timezone

    from memplan.estimate.peak import estimate

    revision, cal_hash = estimator_revision(), calibration_hash(calibration)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = []
    for run in runset.runs:
        try:
            plan = planned_plan(runset, run, runset_path)
            profile = resolve_profile(run.model, plan)
            check_against_profile(profile, plan)
        except InputError as error:
            raise InputError(f"runs.{run.name}: {error}") from None
        result = estimate(profile, plan, calibration)
        lines.append({
            "schema": PREDICTION_SCHEMA, "batch": runset.batch, "run_key": runset.key(run), "name": run.name,
            "model": profile.name, "plan_file": run.plan, "flags": run.flags, "gpus": run.gpus,
            "vram_cap": run.vram_cap, "card": runset.card, "purpose": run.purpose,
            "capacity_bytes": result.vram_bytes, "plan_fingerprint": plan_fingerprint(plan.model_dump(mode="json")),
            "plan": plan.model_dump(mode="json"),  # `memplan score` compares it field by field with the record's
            "predicted": {"peak_allocated_bytes": result.peak_allocated_bytes,
                          "peak_reserved_bytes": result.peak_reserved_bytes, "device_bytes": result.device_bytes,
                          "needed_bytes": result.needed_bytes, "verdict": result.verdict.value,
                          "tight": result.tight, "tight_band": result.tight_band},
            "context_source": result.context_source, "estimator_revision": revision,
            "calibration_sha256": cal_hash, "created": created,
        })
    return lines


@user_errors
def predict(
    *,
    runset: Path = typer.Argument(..., help="Run set file (YAML/JSON, schema memplan.runset/1)."),
    out: Path = typer.Option(..., "--out", "-o", help="Predictions JSONL to write (commit it before the batch runs)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration file (default profiles/calibration.yaml)."),
) -> None:
    """Write the estimate of every planned run of RUNSET, before the batch runs (pre-registration)."""
    from memplan.spec.loading import load_calibration

    if out.exists() and not force:
        raise InputError(f"--out={out}: exists; predictions are written once, before the runs (--force to replace)")
    if out.is_dir():
        raise InputError(f"--out={out}: is a directory, expected a file path for the predictions JSONL")
    the_runset = load_runset(runset)
    lines = predictions_for(the_runset, runset, load_calibration(calibration))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    except OSError as error:
        raise InputError(f"--out={out}: cannot write ({error.strerror})") from None
    fits = sum(line["predicted"]["verdict"] == "fits" for line in lines if line["vram_cap"] is not None)
    capped = sum(line["vram_cap"] is not None for line in lines)
    typer.echo(f"{len(lines)} predictions -> {out} (estimator {lines[0]['estimator_revision'][:12]}, calibration "
               f"{lines[0]['calibration_sha256']}; capped runs: {fits} fit, {capped - fits} OOM)")
    if lines[0]["estimator_revision"].endswith("-dirty"):
        typer.echo("warning: memplan/ has uncommitted changes: commit them, then predict again", err=True)


def _gib(value: int | None) -> str:
    return "" if value is None else f"{value / 2**30:.2f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.1f}%"


def _rows(runs) -> list[list[str]]:
    rows = []
    for r in runs:
        verdict = "" if r.predicted_verdict is None else (
            f"{r.predicted_verdict} / {r.measured_verdict or r.status or 'not run'}")
        right = "" if r.verdict_right is None else ("yes" if r.verdict_right else
                                                    "NO (optimistic)" if r.predicted_verdict == "fits" else "no")
        rows.append([r.name, r.model, r.side or "not run", r.status or "", r.card or "", r.stack,
                     _gib(r.predicted_allocated), _gib(r.measured_allocated), _pct(r.error),
                     "" if r.needed_over_capacity is None else f"{r.needed_over_capacity:.3f}", verdict, right])
    return rows


COLUMNS = ["run", "model", "side", "status", "card", "stack", "alloc pred GiB", "alloc meas GiB", "error",
           "needed/cap", "verdict pred / ran", "right"]


def _summary_lines(groups: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, s in groups.items():
        a, v = s["allocated"], s["verdicts"]
        alloc = (f"allocated median |error| {a['median_abs_error'] * 100:.1f}%, max {a['max_abs_error'] * 100:.1f}% "
                 f"({a['count']} runs)") if a["count"] else "allocated: no runs that trained"
        verdicts = (f"; verdicts {v['right']}/{v['count']} right, {v['fits_that_ran_oom']} 'fits' that ran out"
                    if v["count"] else "")
        missing = s["runs"] - s["recorded"]
        lines.append(f"{name}: {s['runs']} runs{f' ({missing} not run)' if missing else ''}; {alloc}{verdicts}"
                     + (f"; {s['plan_mismatches']} ran another plan" if s["plan_mismatches"] else ""))
    return lines


def _mismatch_lines(runs) -> list[str]:
    """One line per run whose record ran another plan than the one predicted, with the fields that differ."""
    return [f"{r.name} ran another plan than predicted: " + ("; ".join(r.plan_differences) if r.plan_differences
                                                              else "plan fingerprints differ")
            for r in runs if r.plan_matches is False]


@user_errors
def score(
    *,
    predictions: Path = typer.Argument(..., help="Predictions JSONL (`memplan predict`)."),
    records: List[Path] = typer.Argument(..., help="Probe record files (JSONL) of the batch."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table, json or md."),
) -> None:
    """Score predicted runs against their records: per run error and verdict, median/max by side and stack/card."""
    from memplan.planning.scoring import grouped, score as score_runs
    from memplan.probe.records import read_records

    the_predictions = read_predictions(predictions)
    the_records = [record for path in records for record in read_records(path)]
    runs = score_runs(the_predictions, the_records)
    groups = grouped(runs)
    if output_format is OutputFormat.json:
        typer.echo(json.dumps({"runs": [r.as_dict() for r in runs], "summary": groups}, indent=1))
        return
    if output_format is OutputFormat.md:
        typer.echo("| " + " | ".join(COLUMNS) + " |")
        typer.echo("|" + "---|" * len(COLUMNS))
        for row in _rows(runs):
            typer.echo("| " + " | ".join(row) + " |")
        typer.echo("")
        for line in _summary_lines(groups) + _mismatch_lines(runs):
            typer.echo(f"- {line}")
        return
    from rich.table import Table

    table = Table(title=f"predicted vs measured: {predictions}")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("run", "model", "side", "status", "card", "stack",
                                                              "verdict pred / ran", "right") else "right")
    for row in _rows(runs):
        table.add_row(*row)
    out = console()
    out.print(table)
    for line in _summary_lines(groups) + _mismatch_lines(runs):
        out.print(line, markup=False)
