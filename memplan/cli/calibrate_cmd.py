"""`memplan calibrate` and `memplan validate`: probe records in, fitted terms and errors out."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Optional

import typer
import yaml
from rich.table import Table

from memplan.cli.options import OutputFormat, console, user_errors
from memplan.spec.loading import InputError, shown


def load_measurements(paths: List[Path]):
    """Probe records -> Measured, each record's profile and plan validated with a one-line error
    naming file, run and field. Torn last lines are reported as one `warning:` line each, after the
    records load (and not at all when loading fails: the error is the one line)."""
    from pydantic import ValidationError

    from memplan.probe import calibrate as cal
    from memplan.spec.loading import describe_validation_error, plan_from_document, check_finite
    from memplan.probe.records import STATUSES, read_records
    from memplan.spec.profile import Profile

    out = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in paths:
            for record in read_records(path):
                where = f"{path}: run {shown(record.get('run_id'))}"
                for key in ("profile", "plan"):
                    if not isinstance(record.get(key), dict):
                        raise InputError(f"{where}: {key}={shown(record.get(key))}: expected the {key} mapping "
                                         "`memplan probe` writes")
                check_finite(record, where)
                plan_from_document(record["plan"], f"{where}: plan")
                try:
                    Profile.model_validate(record["profile"])
                except ValidationError as error:
                    raise InputError(describe_validation_error(error, f"{where}: profile", Profile)) from None
                if record.get("status") not in STATUSES:
                    raise InputError(f"{where}: status={shown(record.get('status'))}: expected one of {', '.join(STATUSES)}")
                cap = record.get("vram_cap_bytes")
                if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
                    raise InputError(f"{where}: vram_cap_bytes={shown(cap)}: expected null or bytes (an integer >= 0)")
                try:
                    out.append(cal.measured_from_record(record, str(path)))
                except (TypeError, ValueError, AttributeError, KeyError) as error:
                    if isinstance(error, InputError):
                        raise
                    reason = str(error).splitlines()[0][:80] if str(error) else ""
                    raise InputError(f"{where}: malformed readings (summary/ranks: {type(error).__name__} {reason}); "
                                     "expected byte counts as integers") from None
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if not out:
        torn = f"; {len(notes)} torn last line(s) skipped" if notes else ""
        raise InputError(f"records={shown([str(p) for p in paths])}: no probe records found "
                         f"(expected JSON lines of schema memplan.probe/1){torn}")
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    return out


def default_target(records: List[Path]) -> Path:
    """A new file beside the first record file: calibration.yaml, else calibration-2.yaml, -3 ..."""
    folder = records[0].parent if records else Path(".")
    for index in range(1, 1000):
        candidate = folder / ("calibration.yaml" if index == 1 else f"calibration-{index}.yaml")
        if not candidate.exists():
            return candidate
    raise InputError(f"--out: {folder} holds calibration.yaml .. calibration-999.yaml; pass --out FILE")


def _writable_target(target: Path, force: bool) -> Path:
    """Never the shipped calibration; an existing file only with --force."""
    from memplan.spec.loading import CALIBRATION_PATH

    if target.is_dir():
        raise InputError(f"--out={target}: is a directory, expected a file path for the calibration YAML")
    if target.resolve() == CALIBRATION_PATH.resolve():
        raise InputError(f"--out={target}: is the calibration memplan ships; write elsewhere and pass it with "
                         "--calibration FILE")
    if target.exists() and not force:
        raise InputError(f"--out={target}: exists; pass --force to overwrite")
    return target


@user_errors
def calibrate(
    records: List[Path] = typer.Argument(..., help="Probe record files (JSONL)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Where to write (default: a new calibration.yaml beside the first record file)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Fit allocator, context and NCCL terms on real probe records; use them with --calibration FILE."""
    from memplan.probe import calibrate as cal

    target = _writable_target(out or default_target(records), force)
    measurements = load_measurements(records)
    calibration = cal.fit(measurements, [str(p) for p in records])
    result = cal.summary(cal.compare(measurements, calibration))
    calibration = calibration.model_copy(update={"median_error": {
        k: round(v["median_abs_error"], 4) for k, v in result.items()
        if isinstance(v, dict) and v.get("median_abs_error") is not None}})
    tmp = target.with_suffix(".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("# written by `memplan calibrate`; schema memplan.calibration/1\n"
                       + yaml.safe_dump(cal.calibration_document(calibration), sort_keys=False))
        tmp.replace(target)
    except OSError as error:
        raise InputError(f"--out={target}: cannot write ({error.strerror})") from None
    typer.echo(f"calibrated on {len(measurements)} records -> {target} (use it: --calibration {target})")
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
    from memplan.probe import calibrate as cal
    from memplan.spec.loading import load_calibration

    calibration_terms = load_calibration(calibration)
    comparisons = cal.compare(load_measurements(records), calibration_terms)
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
