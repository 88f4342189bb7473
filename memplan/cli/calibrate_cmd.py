"""`memplan calibrate` and `memplan validate`: probe records in, fitted terms and errors out."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Optional

import typer
import yaml
from rich.table import Table

from enum import Enum

from memplan.cli.options import OutputFormat, console, out_file, user_errors
from memplan.spec.loading import InputError, shown


class CalibrateTerms(str, Enum):
    all = "all"
    memory = "memory"
    reserved = "reserved"
    step_time = "step-time"


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


def load_timed_runs(paths: List[Path]):
    """Probe records with a steady-state step time (memplan.planning.stepfit.timed_runs), each run once
    (files may overlap: a split file repeats its source's records)."""
    from memplan.planning.stepfit import timed_runs
    from memplan.probe.records import read_records

    seen: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torn lines were reported by load_measurements
        for path in paths:
            for record in read_records(path):
                seen.setdefault(str(record.get("run_id")), record)
    return timed_runs(seen.values())


def default_target(records: List[Path]) -> Path:
    """A new file beside the first record file: calibration.yaml, else calibration-2.yaml, -3 ..."""
    folder = records[0].parent if records else Path(".")
    for index in range(1, 1000):
        candidate = folder / ("calibration.yaml" if index == 1 else f"calibration-{index}.yaml")
        if not candidate.exists():
            return candidate
    raise InputError(f"--out: {folder} holds calibration.yaml .. calibration-999.yaml; pass --out FILE")


def _with_median_error(calibration, measurements):
    """The calibration with its in-sample median errors (allocated, reserved, device) on ``measurements``."""
    from memplan.probe import calibrate as cal

    result = cal.summary(cal.compare(measurements, calibration))
    return calibration.model_copy(update={"median_error": {
        k: round(v["median_abs_error"], 4) for k, v in result.items()
        if isinstance(v, dict) and v.get("median_abs_error") is not None}})


def _writable_target(target: Path, force: bool) -> Path:
    """Never the shipped calibration; an existing file only with --force."""
    from memplan.spec.loading import CALIBRATION_PATH

    if target.resolve() == CALIBRATION_PATH.resolve():
        raise InputError(f"--out={target}: is the calibration memplan ships; write elsewhere and pass it with "
                         "--calibration FILE")
    return out_file(target, force=force, expected="a file path for the calibration YAML")


@user_errors
def calibrate(
    *,
    records: List[Path] = typer.Argument(..., help="Probe record files (JSONL)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Where to write (default: a new calibration.yaml beside the first record file)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists (--terms step-time updates it)."),
    all_sides: bool = typer.Option(False, "--all-sides", help="Fit the memory terms on every record, held-out side "
                                   "included (default: the calibration side only, memplan.planning.protocol.side_of)."),
    terms: CalibrateTerms = typer.Option(CalibrateTerms.all, "--terms",
                                         help="all | memory | reserved | step-time (step-time keeps the file's memory "
                                              "terms; reserved fits only the reserved pool, keeping the rest)."),
    card: Optional[str] = typer.Option(None, "--card", help="With --terms step-time: fit this card's own step-time "
                                       "terms (catalogue name, e.g. h200-sxm) on the calibration side of its records "
                                       "only, keeping every other term of the file (default: the shipped calibration)."),
) -> None:
    """Fit allocator, context and NCCL terms (on the calibration side of the records: a third, fixed by each
    run id's hash) and the step-time terms on real probe records; use them with --calibration FILE."""
    from memplan.planning.protocol import fit_side
    from memplan.probe import calibrate as cal

    from memplan.planning import stepfit
    from memplan.spec.loading import load_calibration

    if card is not None and terms is not CalibrateTerms.step_time:
        raise InputError(f"--card={shown(card)}: only with --terms step-time (a card's step-time terms)")
    if card is not None:
        from memplan.spec.gpus import get_gpu, match_device_name

        card = (match_device_name(card) or get_gpu(card)).name  # get_gpu: an InputError naming the closest
    target = _writable_target(out or default_target(records), force)
    loaded = load_measurements(records)
    measurements = [m for m in loaded if all_sides or fit_side(m.run_id, m.profile.name, m.status)]
    def kept():  # the file being updated (read only by the terms that keep the rest of it)
        return load_calibration(target) if target.exists() else load_calibration()

    if terms is CalibrateTerms.step_time:  # keep the memory terms of the file being updated
        calibration = kept()
        measurements = []
    else:
        if not measurements:
            raise InputError(f"records: none of the {len(loaded)} records is on the calibration side "
                             "(sha256(run_id) first byte < 85, not a tiny-* fixture, status ok/oom); --all-sides fits on all")
        if terms is CalibrateTerms.reserved:  # the roomy-card device view only: verdicts do not move
            base = kept()
            calibration = base.model_copy(update={
                **cal.fit_reserved(measurements), "fitted_on": sorted({*base.fitted_on, *map(str, records)})})
        else:
            calibration = cal.fit(measurements, [str(p) for p in records])
            # the tight band measures verdicts predicted before their runs, which a fit cannot: kept as shipped
            shipped = load_calibration()
            calibration = calibration.model_copy(update={"tight_band": shipped.tight_band,
                                                         "tight_bands": shipped.tight_bands})
        calibration = _with_median_error(calibration, measurements)
    if terms not in (CalibrateTerms.memory, CalibrateTerms.reserved):
        runs, _ = load_timed_runs(records)
        if not runs and terms is CalibrateTerms.step_time:
            raise InputError(f"records={shown([str(p) for p in records])}: no run with a steady-state step time "
                             "(status ok and a step past the warm-up) to fit the step-time terms on")
        if card is not None:
            from memplan.spec.calibration import StepTimeTerms

            base = calibration.step_time or StepTimeTerms()
            if not any(run.gpu.name == card and stepfit.is_calibration(run.run_id) for run in runs):
                raise InputError(f"--card={card}: no run on that card on the calibration side "
                                 "(sha256(run_id) first byte < 85) with a steady-state step time")
            calibration = calibration.model_copy(update={"step_time": stepfit.fit_card(
                runs, base, card=card, sources=[str(p) for p in records])})
        elif runs:
            kept = calibration.step_time.cards if calibration.step_time else {}
            fitted = stepfit.fit(runs, None, [str(p) for p in records])  # from the defaults: reproducible
            calibration = calibration.model_copy(update={"step_time": fitted.model_copy(update={"cards": kept})})
    tmp = target.with_suffix(".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("# written by `memplan calibrate`; schema memplan.calibration/1\n"
                       + yaml.safe_dump(cal.calibration_document(calibration), sort_keys=False))
        tmp.replace(target)
    except OSError as error:
        raise InputError(f"--out={target}: cannot write ({error.strerror})") from None
    step = calibration.step_time
    fitted = (f"{len(measurements)} of {len(loaded)} records{'' if all_sides else ' (calibration side)'}"
              if measurements else "the file's memory terms kept")
    typer.echo(f"calibrated on {fitted}{f', step time on {step.records} runs' if step and step.records else ''} -> {target} (use it: --calibration {target})")
    for key, value in cal.calibration_document(calibration).items():
        if key not in ("fitted_on", "schema", "step_time"):
            typer.echo(f"  {key}: {value}")
    if step is not None:
        typer.echo(f"  step_time: {stepfit.describe(step)}")
        for name, entry in step.cards.items():
            typer.echo(f"  step_time[{name}]: {stepfit.describe_card(entry)}")


def _category_table(rows: list[dict], gib, pct) -> Table:
    """Per record with a census of live tensors: each category measured vs estimated."""
    from memplan.probe.calibrate import CENSUS_FLOOR_BYTES

    table = Table(title="estimate vs census of live tensors per category (GiB, max over ranks and phases)")
    for column in ("run", "plan", "category", "measured", "estimated", "err"):
        table.add_column(column, justify="left" if column in ("run", "plan", "category") else "right")
    for r in rows:
        for category, cell in r["categories"].items():
            error = pct(cell["error"]) if cell["error"] is not None or cell["estimated_bytes"] < CENSUS_FLOOR_BYTES \
                else f"+{gib(cell['estimated_bytes'])} GiB, none measured"
            table.add_row(r["run_id"][:8], r["plan"], category, gib(cell["measured_bytes"]), gib(cell["estimated_bytes"]),
                          error)
    return table


@user_errors
def validate(
    *,
    records: List[Path] = typer.Argument(..., help="Probe record files (JSONL)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration file (default profiles/calibration.yaml)."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
    side: Optional[str] = typer.Option(None, "--side", help="Only records of this side: calibration or held-out "
                                       "(fixed by each run id's hash, memplan.planning.protocol.side_of)."),
) -> None:
    """Estimate vs measured per record (allocated, reserved, device; per category where the record has a
    census), then median and max error."""
    from memplan.planning.protocol import SIDES, side_of
    from memplan.probe import calibrate as cal
    from memplan.spec.loading import load_calibration

    if side is not None and side not in SIDES:
        raise InputError(f"--side={shown(side)}: expected one of {', '.join(SIDES)}")
    calibration_terms = load_calibration(calibration)
    measurements = [m for m in load_measurements(records) if side is None or side_of(m.run_id) == side]
    if not measurements:
        raise InputError(f"--side={side}: no record of the given files is on that side")
    comparisons = cal.compare(measurements, calibration_terms)
    result = cal.summary(comparisons)
    rows = [{
        "run_id": c.measured.run_id, "model": c.measured.profile.name, "plan": c.measured.plan.name,
        "status": c.measured.status, "gpus": c.measured.plan.hardware.num_gpus,
        "measured_allocated_bytes": c.measured.allocated, "estimated_allocated_bytes": c.estimate.peak_allocated_bytes,
        "measured_reserved_bytes": c.measured.reserved, "estimated_reserved_bytes": c.estimate.peak_reserved_bytes,
        "measured_device_bytes": c.measured.device, "estimated_device_bytes": c.estimate.device_bytes,
        "error_allocated": c.error("allocated"), "error_reserved": c.error("reserved"), "error_device": c.error("device"),
        "phase_errors": c.phase_errors(), "verdict_under_cap": c.verdict_under_cap(),
        "categories": {category.value: {"measured_bytes": measured, "estimated_bytes": estimated, "error": error}
                       for category, (estimated, measured, error) in c.category_errors().items()},
    } for c in comparisons]
    from memplan.planning import stepfit

    runs, _ = load_timed_runs(records)
    runs = [run for run in runs if side is None or side_of(run.run_id) == side]
    steps = stepfit.pairs(runs, calibration_terms.step_time)
    step_summary = stepfit.accuracy(steps)
    if output_format is OutputFormat.json:
        typer.echo(json.dumps({"records": rows, "summary": result,
                               "step_time": {"records": steps, "summary": step_summary}}, indent=2))
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
    censused = [r for r in rows if r["categories"]]
    if censused:
        out.print(_category_table(censused, gib, pct))
        for category, s in result["categories"].items():
            absent = (f"; {s['absent_count']} runs where the census found none and the estimate holds some"
                      if s["absent_count"] else "")
            measured = (f"median |error| {s['median_abs_error'] * 100:.1f}%, max {s['max_abs_error'] * 100:.1f}% "
                        f"over {s['count']} censused runs" if s["count"] else "no run with a census of it")
            out.print(f"{category}: {measured}{absent}")
    v = result["verdicts"]
    if v["count"]:
        out.print(f"verdicts under a VRAM cap: {v['correct']}/{v['count']} correct, {v['fits_that_ran_oom']} 'fits' that ran out of memory")
    if steps:
        _print_steps(out, steps, step_summary)


def _print_steps(out, steps, summary) -> None:
    """Predicted vs measured steady-state step time per run, then the rank and error metrics."""
    table = Table(title="step time: predicted vs measured (steady state, seconds); error = (pred - meas) / meas")
    phased = any(r.get("measured_optimizer_s") for r in steps)
    columns = ("run", "model", "engine", "gpus", "card", "measured", "predicted", "err",
               *(("opt step meas", "opt step pred") if phased else ()), "largest term")
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "model", "engine", "card", "largest term") else "right")
    for r in steps:
        top = max(r["terms"].items(), key=lambda kv: kv[1]) if r["terms"] else ("", 0.0)
        optimizer = ()
        if phased:
            measured = r.get("measured_optimizer_s")
            optimizer = ("" if measured is None else f"{measured:.3f}", f"{r['predicted_optimizer_s']:.3f}")
        table.add_row(r["run_id"][:8], r["model"], r["engine"], str(r["num_gpus"]), r["gpu"], f"{r['measured_s']:.3f}",
                      f"{r['predicted_s']:.3f}", f"{(r['predicted_s'] - r['measured_s']) / r['measured_s'] * 100:+.0f}%",
                      *optimizer, f"{top[0]} {top[1]:.3f}")
    out.print(table)
    rho = "n/a" if summary["spearman"] is None else f"{summary['spearman']:.3f}"
    out.print(f"step time: Spearman {rho}, within 30% {summary['within_30']:.0%}, within 50% {summary['within_50']:.0%}, "
              f"median measured/predicted {summary['median_ratio']:.2f} over {summary['runs']} runs")
