"""`memplan calibrate` and `memplan validate`: probe records in, fitted terms and errors out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
import yaml
from rich.table import Table

from memplan.cli.options import OutputFormat, console, user_errors


@user_errors
def calibrate(
    records: List[Path] = typer.Argument(..., help="Probe record files (JSONL)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default profiles/calibration.yaml)."),
) -> None:
    """Fit allocator, context and NCCL terms on real probe records; estimates use them by default."""
    from memplan import calibrate as cal
    from memplan.estimators.overhead import calibration_path

    measurements = cal.load_measurements(records)
    calibration = cal.fit(measurements, [str(p) for p in records])
    result = cal.summary(cal.compare(measurements, calibration))
    calibration = calibration.model_copy(update={"median_error": {
        k: round(v["median_abs_error"], 4) for k, v in result.items()
        if isinstance(v, dict) and v.get("median_abs_error") is not None}})
    target = out or calibration_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text("# written by `memplan calibrate`; schema memplan.calibration/1\n"
                   + yaml.safe_dump(cal.calibration_document(calibration), sort_keys=False))
    tmp.replace(target)
    typer.echo(f"calibrated on {len(measurements)} records -> {target}")
    for key, value in cal.calibration_document(calibration).items():
        if key not in ("fitted_on", "schema"):
            typer.echo(f"  {key}: {value}")


@user_errors
def validate(
    records: List[Path] = typer.Argument(..., help="Probe record files (JSONL)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration file (default profiles/calibration.yaml)."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
) -> None:
    """Estimate vs measured per record (allocated, reserved, device), then median and max error."""
    from memplan import calibrate as cal
    from memplan.loading import load_calibration

    comparisons = cal.compare(cal.load_measurements(records), load_calibration(calibration))
    result = cal.summary(comparisons)
    rows = [{
        "run_id": c.measured.run_id, "model": c.measured.profile.name, "plan": c.measured.plan.name,
        "status": c.measured.status, "gpus": c.measured.plan.hardware.num_gpus,
        "measured_allocated_bytes": c.measured.allocated, "estimated_allocated_bytes": c.estimate.peak_allocated_bytes,
        "measured_reserved_bytes": c.measured.reserved, "estimated_reserved_bytes": c.estimate.peak_reserved_bytes,
        "measured_device_bytes": c.measured.device, "estimated_device_bytes": c.estimate.device_bytes,
        "error_allocated": c.error("allocated"), "error_reserved": c.error("reserved"), "error_device": c.error("device"),
        "phase_errors": c.phase_errors(), "verdict_under_cap": c.verdict_under_cap(),
    } for c in comparisons]
    if output_format is OutputFormat.json:
        typer.echo(json.dumps({"records": rows, "summary": result}, indent=2))
        return
    table = Table(title="estimate vs measured (GiB, max over ranks); error = (est - meas) / meas")
    for column in ("run", "model", "plan", "gpus", "status", "alloc meas", "alloc est", "err",
                   "resv meas", "resv est", "err", "device meas", "device est", "err"):
        table.add_column(column, justify="left" if column in ("run", "model", "plan", "status") else "right")

    def gib(n: int) -> str:
        return f"{n / 2**30:.2f}"

    def pct(e: float | None) -> str:
        return "" if e is None else f"{e * 100:+.1f}%"

    for r in rows:
        table.add_row(r["run_id"][:8], r["model"], r["plan"], str(r["gpus"]), r["status"],
                      gib(r["measured_allocated_bytes"]), gib(r["estimated_allocated_bytes"]), pct(r["error_allocated"]),
                      gib(r["measured_reserved_bytes"]), gib(r["estimated_reserved_bytes"]), pct(r["error_reserved"]),
                      gib(r["measured_device_bytes"]), gib(r["estimated_device_bytes"]), pct(r["error_device"]))
    out = console()
    out.print(table)
    for kind in ("allocated", "reserved", "device"):
        s = result[kind]
        if s["count"]:
            out.print(f"{kind}: median |error| {s['median_abs_error'] * 100:.1f}%, max {s['max_abs_error'] * 100:.1f}% over {s['count']} runs")
    v = result["verdicts"]
    if v["count"]:
        out.print(f"verdicts under a VRAM cap: {v['correct']}/{v['count']} correct, {v['fits_that_ran_oom']} 'fits' that ran out of memory")
