"""Calibrate the terms no formula derives, and validate estimates against probe records.

Fitted terms (memplan/estimate/overhead.py, Calibration):
- reserved_ratio, reserved_constant_bytes: least squares of measured reserved on measured allocated
  peaks (a property of the caching allocator and the workload's block sizes, not of the model);
- context_bytes: median of measured (device used - reserved) of runs without a NCCL communicator
  (plain PyTorch on one GPU); nccl_bytes: the extra median of runs with one (several GPUs, or
  DeepSpeed, which creates its process group even on one GPU);
- allocated_constant_bytes: median of (measured - analytic) peak allocated: what every run holds
  beyond the model (cuBLAS/cuDNN workspaces, RNG state, small buffers); one number for all runs;
- host_base_bytes: median host RSS per process of runs without offload;
- pressure_ratio, pressure_block: from runs under --vram-cap, the share of allocated memory and of the
  largest block the allocator cannot give back under pressure (fit_pressure).
No per-configuration factor is fitted: the same eight numbers apply to every plan.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from memplan.estimate.peak import Estimate, category_bytes, estimate
from memplan.estimate.overhead import CALIBRATION_SCHEMA, DEFAULT, Calibration, uses_nccl
from memplan.spec.allocator import record_plan_document, unmodelled_options
from memplan.spec.loading import InputError
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.record import ProbeRecord
from memplan.spec.vocabulary import Category


@dataclass(frozen=True)
class Measured:
    """One probe record reduced to what the estimate predicts (max over ranks)."""

    run_id: str
    source: str
    status: str
    profile: Profile
    plan: Plan
    allocated: int
    reserved: int
    device: int
    host: int
    phases: dict[str, int]  # allocated peak per phase (Phase value), max over ranks
    categories: dict[Category, int] | None  # the census of live tensors; None where the probe took none
    vram_cap_bytes: int | None
    card: str | None
    versions: dict[str, str]
    alloc_options: tuple[str, ...] = ()  # PYTORCH_CUDA_ALLOC_CONF options not modelled (spec.allocator.unmodelled_options)


def measured_from_record(record: dict[str, Any], source: str) -> Measured:
    """A record read into the typed ProbeRecord (memplan.spec.record), reduced to what the estimate
    predicts: peaks from the summary (else the max over phases and ranks), allocated bytes per phase,
    and bytes per category where the probe took a census."""
    try:
        profile = Profile.model_validate(record["profile"])
        plan = Plan.model_validate(record_plan_document(record))
    except Exception as error:  # noqa: BLE001 - any mismatch is a foreign/old record
        raise InputError(f"{source}: run {record.get('run_id')}: profile/plan do not validate: "
                         f"{str(error).splitlines()[0]}") from None
    typed = ProbeRecord.model_validate({**record, "summary": record.get("summary") or {}})
    summary = typed.summary
    allocated = typed.by_phase("max_allocated_bytes")
    return Measured(
        run_id=str(typed.run_id), source=source, status=typed.status, profile=profile, plan=plan,
        allocated=summary.peak_allocated_bytes or max(allocated.values(), default=0),
        reserved=summary.peak_reserved_bytes or max(typed.by_phase("max_reserved_bytes").values(), default=0),
        device=summary.peak_device_bytes or max(typed.by_phase("device_used_bytes").values(), default=0),
        host=max(typed.by_phase("host_rss_bytes").values(), default=0),
        phases={phase.value: value for phase, value in allocated.items()},
        categories=typed.categories(),
        vram_cap_bytes=typed.vram_cap_bytes,
        card=typed.environment.get("gpu_name"),
        versions={k: str(v) for k, v in typed.environment.items()
                  if k in ("driver", "cuda", "torch", "transformers", "peft", "deepspeed") and v},
        alloc_options=unmodelled_options(typed.environment.get("alloc_conf")),
    )


def load_measurements(paths: Iterable[str | Path]) -> list[Measured]:
    from memplan.probe.records import read_records  # no torch: records.py is plain JSON

    out = []
    for path in paths:
        for record in read_records(path):
            out.append(measured_from_record(record, str(path)))
    if not out:
        raise InputError("records: no probe records found in the given files")
    return out


def _least_squares(xs: list[int], ys: list[int]) -> tuple[float, float]:
    """y = a x + b by ordinary least squares (a = 0 slope falls back to the median offset)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return 1.0, statistics.median(y - x for x, y in zip(xs, ys)) if xs else 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    a = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    return a, mean_y - a * mean_x


# A census category below this (1 MiB) counts as none: its relative error is left undefined.
CENSUS_FLOOR_BYTES = 2**20
PRESSURE_RATIOS = [i / 400 for i in range(0, 121)]  # 0 .. 0.30
PRESSURE_BLOCKS = [i / 100 for i in range(0, 201)]  # 0 .. 2.00


def fit_pressure(capped: list[tuple[Measured, int, int, int]]) -> tuple[float, float] | None:
    """(pressure_ratio a, pressure_block b) from runs under --vram-cap.

    Each (record, estimated peak allocated A, largest block L, context + NCCL O) has a slack
    s = cap - O - A; the run needs a A + b L of it: it fits iff a A + b L <= s. Over a grid of (a, b):
    fewest optimistic verdicts ("fits" that ran out of memory), then fewest wrong verdicts, then the
    widest margin (the smallest distance, in bytes, of any run from its side of the line): a
    maximum-margin separation of the runs that fit from those that ran out."""
    runs = [(allocated, block, m.vram_cap_bytes - outside - allocated, m.status == "oom")
            for m, allocated, block, outside in capped if m.status in ("ok", "oom") and allocated > 0]
    if not runs or not any(oom for *_, oom in runs):
        return None
    best: tuple | None = None
    for a in PRESSURE_RATIOS:
        for b in PRESSURE_BLOCKS:
            optimistic = wrong = 0
            margin = float("inf")
            for allocated, block, slack, oom in runs:
                distance = (a * allocated + b * block - slack) * (1 if oom else -1)  # > 0: on its side
                if (distance <= 0) if oom else (distance < 0):
                    wrong += 1
                    optimistic += oom
                margin = min(margin, distance)
            key = (optimistic, wrong, -margin)
            if best is None or key < best[0]:
                best = (key, a, b)
    return best[1], best[2]


def default_allocator(measurements: list[Measured]) -> list[Measured]:
    """The runs made under PyTorch's default caching allocator, the one the memory terms model (runs
    under expandable segments, stack.allocator, reserve and strand differently: overhead.needed_bytes;
    runs with other allocator options, Measured.alloc_options, place their blocks otherwise)."""
    return [m for m in measurements if m.plan.stack.allocator == "default" and not m.alloc_options]


def fit_reserved(measurements: list[Measured]) -> dict[str, Any]:
    """{reserved_ratio, reserved_constant_bytes}: reserved peak = allocated peak x (1 + ratio) + constant,
    least squares over the uncapped runs that trained (overhead.reserved_bytes). Only the roomy-card
    device view depends on it: the verdict's `needed` does not (pressure terms, overhead.needed_bytes).
    The default allocator's pool: runs under expandable segments are left out."""
    ok = [m for m in default_allocator(measurements) if m.status == "ok" and m.allocated > 0 and not m.vram_cap_bytes]
    if not ok:
        raise InputError("records: no successful ('ok') runs without a VRAM cap to fit the reserved pool on")
    slope, offset = _least_squares([m.allocated for m in ok], [m.reserved for m in ok])
    return {"reserved_ratio": max(0.0, round(slope - 1, 4)), "reserved_constant_bytes": max(0, int(offset))}


def fit(measurements: list[Measured], sources: list[str]) -> Calibration:
    """Fit the calibration terms. Runs under a VRAM cap (whose allocator was squeezed) fit only the
    pressure ratio; the reserved and context terms come from uncapped runs. All of them model PyTorch's
    default allocator: runs under expandable segments (stack.allocator) are left out of every fit."""
    measurements = default_allocator(measurements)
    capped = [m for m in measurements if m.vram_cap_bytes and m.status in ("ok", "oom")]
    ok = [m for m in measurements if m.status == "ok" and m.allocated > 0 and not m.vram_cap_bytes]
    if not ok:
        raise InputError("records: no successful ('ok') runs without a VRAM cap to calibrate on")
    reserved = fit_reserved(ok)
    nccl = [uses_nccl(m.plan.hardware.num_gpus, m.plan.engine.kind == "deepspeed") for m in ok]
    single = [m.device - m.reserved for m, n in zip(ok, nccl) if not n and m.device]
    multi = [m.device - m.reserved for m, n in zip(ok, nccl) if n and m.device]
    context = int(statistics.median(single)) if single else DEFAULT.context_bytes
    nccl = max(0, int(statistics.median(multi)) - context) if multi else DEFAULT.nccl_bytes
    analytic = [estimate(m.profile, m.plan, Calibration(allocated_constant_bytes=0)).peak_allocated_bytes for m in ok]
    constant = int(statistics.median(m.allocated - a for m, a in zip(ok, analytic)))
    hosts = [m.host for m in ok if m.host and m.plan.engine.offload_optimizer == "none"
             and m.plan.engine.offload_params == "none"]
    versions = dict(ok[0].versions)
    fitted = Calibration(
        allocated_constant_bytes=max(constant, 0),
        **reserved,
        context_bytes=context, nccl_bytes=nccl,
        host_base_bytes=int(statistics.median(hosts)) if hosts else DEFAULT.host_base_bytes,
        fitted_on=sorted(set(sources)), card=ok[0].card, versions=versions,
    )
    squeezed = []
    for m in capped:
        ds = m.plan.engine.kind == "deepspeed"
        outside = context + (nccl if uses_nccl(m.plan.hardware.num_gpus, ds) else 0)
        result = estimate(m.profile, m.plan, fitted)
        squeezed.append((m, result.peak_allocated_bytes, result.largest_block_bytes, outside))
    fitted = fitted.model_copy(update=family_terms(ok, fitted))
    pressure = fit_pressure(squeezed)
    if pressure is None:
        return fitted
    return fitted.model_copy(update={"pressure_ratio": pressure[0], "pressure_block": pressure[1]})


def family_of_card(card: str | None) -> str | None:
    """The architecture family of a record's torch.cuda.get_device_name() (profiles/gpus.yaml), or None."""
    from memplan.spec.gpus import match_device_name

    spec = match_device_name(card)
    return spec.family if spec else None


def family_terms(ok: list[Measured], fitted: Calibration) -> dict[str, Any]:
    """Calibration keyed by card family: the context (median device - reserved without NCCL) and the NCCL
    extra (median with NCCL, less the context) of each family's uncapped runs; ``family``: the family
    the top-level terms were fitted on (that of the first run, as ``card``)."""
    from memplan.spec.calibration import FamilyTerms

    by_family: dict[str, list[Measured]] = {}
    for m in ok:
        family = family_of_card(m.card)
        if family:
            by_family.setdefault(family, []).append(m)
    families = {}
    for family, runs in sorted(by_family.items()):
        nccl = [uses_nccl(m.plan.hardware.num_gpus, m.plan.engine.kind == "deepspeed") for m in runs]
        single = [m.device - m.reserved for m, n in zip(runs, nccl) if not n and m.device]
        multi = [m.device - m.reserved for m, n in zip(runs, nccl) if n and m.device]
        context = int(statistics.median(single)) if single else fitted.context_bytes
        extra = max(0, int(statistics.median(multi)) - context) if multi else fitted.nccl_bytes
        families[family] = FamilyTerms(context_bytes=context, nccl_bytes=extra, card=runs[0].card, records=len(runs))
    return {"family": family_of_card(fitted.card), "families": families}


@dataclass(frozen=True)
class Comparison:
    measured: Measured
    estimate: Estimate

    def error(self, kind: str) -> float | None:
        """Relative error (estimate - measured) / measured of allocated, reserved or device."""
        measured = {"allocated": self.measured.allocated, "reserved": self.measured.reserved,
                    "device": self.measured.device}[kind]
        predicted = {"allocated": self.estimate.peak_allocated_bytes, "reserved": self.estimate.peak_reserved_bytes,
                     "device": self.estimate.device_bytes}[kind]
        return (predicted - measured) / measured if measured else None

    def phase_errors(self) -> dict[str, float]:
        out = {}
        for phase in self.estimate.phases:
            measured = self.measured.phases.get(phase.phase.value)
            if measured:
                predicted = phase.total + self.estimate.calibration.allocated_constant_bytes
                out[phase.phase.value] = (predicted - measured) / measured
        return out

    def category_errors(self) -> dict[Category, tuple[int, int, float | None]]:
        """Per censused Category: (estimated, measured, relative error); the estimate at each
        category's largest over the phases (memplan.estimate.peak.category_bytes). Empty without a census.
        The relative error is None where the census found less than CENSUS_FLOOR_BYTES of the category:
        a ratio over a few stray bytes says nothing (absent_categories() lists those)."""
        if not self.measured.categories:
            return {}
        predicted = category_bytes(self.estimate)
        return {category: (predicted.get(category, 0), measured,
                           (predicted.get(category, 0) - measured) / measured if measured >= CENSUS_FLOOR_BYTES else None)
                for category, measured in self.measured.categories.items()}

    def absent_categories(self) -> dict[Category, int]:
        """Categories the census found (next to) none of while the estimate holds at least CENSUS_FLOOR_BYTES:
        {category: estimated bytes}. Such a row is a difference of attribution or a real over-estimate;
        the total (allocated) says which."""
        return absent_of(self.category_errors())

    def verdict_under_cap(self) -> tuple[str, str] | None:
        """(predicted, measured) verdicts when the run had a VRAM cap: OOM if the device view exceeds it
        (the probe's cap limits the allocator to the cap less what lies outside it, as a real card does)."""
        cap = self.measured.vram_cap_bytes
        if not cap or self.measured.alloc_options:  # an allocator setting the estimate does not model
            return None
        predicted = "oom" if self.estimate.needed_bytes > cap else "fits"
        measured = "oom" if self.measured.status == "oom" else "fits" if self.measured.status == "ok" else None
        return (predicted, measured) if measured else None


def absent_of(errors: dict[Category, tuple[int, int, float | None]]) -> dict[Category, int]:
    """Of Comparison.category_errors(): {category: estimated bytes} where the census found under
    CENSUS_FLOOR_BYTES and the estimate at least that."""
    return {category: estimated for category, (estimated, measured, _) in errors.items()
            if measured < CENSUS_FLOOR_BYTES <= estimated}


def compare(measurements: list[Measured], calibration: Calibration) -> list[Comparison]:
    return [Comparison(m, estimate(m.profile, m.plan, calibration)) for m in measurements]


def summary(comparisons: list[Comparison]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(comparisons)}
    ok = [c for c in comparisons if c.measured.status == "ok"]
    for kind in ("allocated", "reserved", "device"):
        # under a VRAM cap the allocator is squeezed: its reserved and device readings are not the
        # roomy-card views the estimate gives (those runs count for allocated and for verdicts)
        errors = [abs(e) for c in ok if (kind == "allocated" or not c.measured.vram_cap_bytes)
                  and (e := c.error(kind)) is not None]
        out[kind] = {"median_abs_error": statistics.median(errors) if errors else None,
                     "max_abs_error": max(errors) if errors else None, "count": len(errors)}
    by_category: dict[Category, list[float]] = {}
    absent: dict[Category, int] = {}
    for c in ok:
        errors = c.category_errors()
        for category, (_, _, error) in errors.items():
            if error is not None:
                by_category.setdefault(category, []).append(abs(error))
        for category in absent_of(errors):
            absent[category] = absent.get(category, 0) + 1
    out["categories"] = {category.value: {"median_abs_error": statistics.median(errors) if errors else None,
                                          "max_abs_error": max(errors) if errors else None, "count": len(errors),
                                          "absent_count": absent.get(category, 0)}
                         for category, errors in {**{k: [] for k in absent}, **by_category}.items()}
    verdicts = [v for c in comparisons if (v := c.verdict_under_cap())]
    out["verdicts"] = {"count": len(verdicts), "correct": sum(p == m for p, m in verdicts),
                       "fits_that_ran_oom": sum(p == "fits" and m == "oom" for p, m in verdicts)}
    return out


def calibration_document(calibration: Calibration) -> dict[str, Any]:
    document = calibration.model_dump(mode="json", by_alias=True)
    document["schema"] = CALIBRATION_SCHEMA
    if document.get("step_time") is None:
        document.pop("step_time", None)
    return document

