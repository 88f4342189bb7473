"""Fit the step-time model's terms on probe records and check it against them. No torch.

Each record gives a measured steady-state step (memplan.spec.record.steady_step_seconds: warm-up
excluded, the slowest rank) and, through its profile and plan dumps, the model's terms. The model is
linear in seven coefficients once the overlap terms are held fixed: the inverse efficiency of each
kernel class on the record's card, ``module_call_s``, ``zero3_fetch_s`` and the inverse CPU Adam rate.
``fit`` minimises the squared relative error sum_i ((predicted_i - measured_i) / measured_i)^2 plus a
ridge pull RIDGE x sum_j (c_j / c0_j - 1)^2 toward the defaults c0 (memplan.spec.calibration), with
every coefficient >= 0 (projected coordinate descent), and re-evaluates the overlap terms between
rounds. A coefficient whose term is under MIN_SHARE of every record's step stays at its default:
the records say nothing about it. One set of numbers for every plan; nothing per configuration.

A record that times its phases (``phase_times_s``, since 2026-12-07) adds a second row for an offloaded
plan: its measured optimizer-step phase against the model's (memplan.planning.steptime.
optimizer_phase_seconds), where CPU Adam is the only coefficient. The whole step leaves CPU Adam to a
residual next to the framework and ZeRO-3 hook terms; the phase measures it nearly alone.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

from memplan.planning.steptime import HOST_CORES_PER_GPU, OPTIMIZER_PHASE_SHARES, StepTime, time_step
from memplan.planning.workload import KERNEL_CLASSES, Workload, workload
from memplan.spec.allocator import record_plan_document
from memplan.spec.calibration import KernelEfficiency, StepTimeTerms
from memplan.spec.gpus import GpuSpec, gpu_for, match_device_name
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.record import steady_phase_seconds, steady_step_seconds

RIDGE = 0.02
MIN_SHARE = 0.10
ROUNDS = 4


def is_calibration(run_id: str) -> bool:
    """The split rule shared with the memory accuracy: sha256(run_id)'s first byte < 85 -> calibration
    (about a third), else held out."""
    return hashlib.sha256(run_id.encode()).digest()[0] < 85


@dataclass(frozen=True)
class TimedRun:
    """One probe record reduced to what the step-time model needs."""

    run_id: str
    profile: Profile
    plan: Plan
    gpu: GpuSpec
    measured_s: float
    host_cores: int | None
    work: Workload
    capped: bool = False  # ran under --vram-cap (the allocator squeezed: frees and retries)
    device: str | None = None  # torch.cuda.get_device_name() of the record
    measured_phases: dict[str, float] | None = None  # steady seconds per phase (steady_phase_seconds)

    @property
    def measured_optimizer_s(self) -> float | None:
        return (self.measured_phases or {}).get("optimizer_step")

    def predict(self, terms: StepTimeTerms | None = None) -> StepTime:
        return time_step(self.work, self.plan.engine, num_gpus=self.plan.hardware.num_gpus, gpu=self.gpu, terms=terms,
                         host_cores=self.host_cores, foreach=self.plan.optimizer.foreach)


def timed_runs(records: Iterable[dict[str, Any]]) -> tuple[list[TimedRun], list[str]]:
    """(runs with a steady step time, "run_id: reason" for the records skipped). A fake-world record
    (``memplan probe --fake-world N``) is skipped: its collectives complete at once and move no data, so its
    step is one GPU's compute, not the N-GPU plan's step (its memory is the plan's; its time is not)."""
    runs, skipped = [], []
    for record in records:
        run_id = str(record.get("run_id"))
        if record.get("status") != "ok":
            skipped.append(f"{run_id}: status {record.get('status')}")
            continue
        if record.get("fake_world"):  # memplan.probe.fake_world: the fake group's collectives move no data
            skipped.append(f"{run_id}: rank 0 of a fake world of {record['fake_world']}, not a step of the plan")
            continue
        try:
            profile = Profile.model_validate(record["profile"])
            plan = Plan.model_validate(record_plan_document(record))
        except (KeyError, ValueError) as error:
            skipped.append(f"{run_id}: {str(error).splitlines()[0]}")
            continue
        measured = steady_step_seconds(record.get("ranks") or [], record["plan"])
        if not measured:
            skipped.append(f"{run_id}: no steady-state step times")
            continue
        environment = record.get("environment") or {}
        gpu = match_device_name(environment.get("gpu_name")) or gpu_for(plan.hardware.gpu, plan.hardware.vram_gib)
        runs.append(TimedRun(run_id, profile, plan, gpu, measured, environment.get("host_cpus"),
                             workload(profile, plan), bool(record.get("vram_cap_bytes")),
                             environment.get("gpu_name"),
                             steady_phase_seconds(record.get("ranks") or [], record["plan"])))
    return runs, skipped


# ---------------------------------------------------------------- the fit
def _columns(run: TimedRun, terms: StepTimeTerms, step: dict[str, float]) -> tuple[dict[str, float], float]:
    """({coefficient: seconds it contributes at its current value}, seconds of the fixed terms), from the
    run's predicted breakdown ``step`` under ``terms``."""
    columns = {f"{run.gpu.name}.{k}": step[k] for k in KERNEL_CLASSES}
    columns["module_call_s"] = step["framework"]
    zero3 = run.plan.engine.zero_stage == 3 and run.plan.engine.kind == "deepspeed"
    columns["zero3_fetch_s"] = run.work.module_calls * terms.zero3_fetch_s if zero3 else 0.0
    columns["cpu_adam"] = step["cpu_adam"]
    fixed = sum(step.values()) - sum(columns.values())
    return columns, fixed


def _optimizer_row(run: TimedRun, step: dict[str, float]) -> tuple[dict[str, float], float, float] | None:
    """(columns, fixed, measured) of the optimizer-step phase of an offloaded run that timed it, else None:
    CPU Adam is its one coefficient, the rest of the phase's terms (from the breakdown ``step``) are fixed."""
    if not run.measured_optimizer_s or not step.get("cpu_adam"):
        return None
    fixed = sum(step.get(term, 0.0) * share for term, share in OPTIMIZER_PHASE_SHARES.items() if term != "cpu_adam")
    return {"cpu_adam": step["cpu_adam"]}, fixed, run.measured_optimizer_s


def _rows(runs: list[TimedRun], terms: StepTimeTerms) -> list[tuple[dict[str, float], float, float]]:
    """One row per run's step, and one per run's optimizer-step phase where _optimizer_row gives one; each
    run is predicted once."""
    steps = [run.predict(terms).breakdown for run in runs]
    rows = [(*_columns(run, terms, step), run.measured_s) for run, step in zip(runs, steps)]
    return rows + [row for row in (_optimizer_row(run, step) for run, step in zip(runs, steps)) if row is not None]


def _apply(terms: StepTimeTerms, scale: dict[str, float], cards: list[str]) -> StepTimeTerms:
    """Terms with every coefficient multiplied by its scale (a time multiplier: 2 = twice as slow)."""
    efficiency = dict(terms.efficiency)
    for card in cards:
        base = terms.for_card(card)
        efficiency[card] = KernelEfficiency(**{k: min(1.0, getattr(base, k) / max(scale.get(f"{card}.{k}", 1.0), 1e-9))
                                               for k in KERNEL_CLASSES})
    return terms.model_copy(update={
        "efficiency": efficiency,
        "module_call_s": terms.module_call_s * scale.get("module_call_s", 1.0),
        "zero3_fetch_s": terms.zero3_fetch_s * scale.get("zero3_fetch_s", 1.0),
        "cpu_adam_params_per_core_s": terms.cpu_adam_params_per_core_s / max(scale.get("cpu_adam", 1.0), 1e-9),
    })


def _solve(rows: list[tuple[dict[str, float], float, float]], names: list[str]) -> dict[str, float]:
    """Scales z >= 0 minimising sum_i ((sum_j z_j a_ij + f_i) / m_i - 1)^2 + RIDGE sum_j (z_j - 1)^2."""
    a = [[row[0].get(name, 0.0) / row[2] for name in names] for row in rows]
    b = [1.0 - row[1] / row[2] for row in rows]
    k = len(names)
    gram = [[sum(r[i] * r[j] for r in a) + (RIDGE if i == j else 0.0) for j in range(k)] for i in range(k)]
    rhs = [sum(r[i] * y for r, y in zip(a, b)) + RIDGE for i in range(k)]
    z = [1.0] * k
    for _ in range(500):
        delta = 0.0
        for i in range(k):
            if gram[i][i] <= 0:
                continue
            value = (rhs[i] - sum(gram[i][j] * z[j] for j in range(k) if j != i)) / gram[i][i]
            value = max(value, 0.0)
            delta = max(delta, abs(value - z[i]))
            z[i] = value
        if delta < 1e-10:
            break
    return dict(zip(names, z))


def fit(runs: list[TimedRun], base: StepTimeTerms | None = None, sources: Iterable[str] = ()) -> StepTimeTerms:
    """Fitted terms: per-card efficiencies and the host terms (module docstring). The card with most
    runs also becomes ``default`` (cards never measured assume its fractions of their rated rate)."""
    terms = base or StepTimeTerms()
    if not runs:
        return terms
    cards = sorted({run.gpu.name for run in runs})
    for _ in range(ROUNDS):
        rows = _rows(runs, terms)
        names = sorted({n for columns, _, m in rows for n, v in columns.items() if v / m >= MIN_SHARE})
        scale = _solve(rows, names) if names else {}
        terms = _apply(terms, scale, cards)
    busiest = max(cards, key=lambda card: sum(run.gpu.name == card for run in runs))
    efficiency = {**terms.efficiency, "default": terms.for_card(busiest)}
    terms = terms.model_copy(update={"efficiency": {k: _rounded(v) for k, v in efficiency.items()},
                                     "module_call_s": float(f"{terms.module_call_s:.3g}"),
                                     "zero3_fetch_s": float(f"{terms.zero3_fetch_s:.3g}"),
                                     "cpu_adam_params_per_core_s": float(f"{terms.cpu_adam_params_per_core_s:.3g}")})
    check = accuracy(pairs(runs, terms))
    return terms.model_copy(update={"fitted_on": sorted(set(sources)), "records": len(runs),
                                    "in_sample": {k: round(v, 4) for k, v in check.items() if v is not None}})


def fit_card(runs: list[TimedRun], base: StepTimeTerms, *, card: str, sources: Iterable[str] = ()) -> StepTimeTerms:
    """``base`` with a per-card entry for ``card`` (catalogue name) fitted on the calibration side only
    (is_calibration: the held-out side is never read) of ``runs`` on that card: its four efficiencies
    and its three host terms, starting from (and ridge-pulled toward) what ``base`` gives the card
    without an entry of its own. Every other card's terms, and the top-level ones, stay as they are."""
    from memplan.spec.calibration import CardStepTerms

    mine = [run for run in runs if run.gpu.name == card and is_calibration(run.run_id)]
    if not mine:
        return base
    start = base.model_copy(update={"cards": {k: v for k, v in base.cards.items() if k != card}})
    terms = start.model_copy(update={"efficiency": {**start.efficiency, card: start.for_card(card)}})
    for _ in range(ROUNDS):
        rows = _rows(mine, terms)
        names = sorted({n for columns, _, m in rows for n, v in columns.items() if v / m >= MIN_SHARE})
        scale = _solve(rows, names) if names else {}
        terms = _apply(terms, scale, [card])
    entry = CardStepTerms(efficiency=_rounded(terms.for_card(card)),
                          module_call_s=float(f"{terms.module_call_s:.3g}"),
                          zero3_fetch_s=float(f"{terms.zero3_fetch_s:.3g}"),
                          cpu_adam_params_per_core_s=float(f"{terms.cpu_adam_params_per_core_s:.3g}"),
                          card=card, side="calibration")
    fitted = start.model_copy(update={"cards": {**start.cards, card: entry}})
    check = accuracy(pairs(mine, fitted))
    devices = sorted({run.device for run in mine if run.device})
    entry = entry.model_copy(update={
        "card": devices[0] if len(devices) == 1 else card,
        "host_cpus": sorted({run.host_cores for run in mine if run.host_cores}),
        "fitted_on": sorted(set(sources)), "records": len(mine),
        "in_sample": {k: round(v, 4) for k, v in check.items() if v is not None}})
    return start.model_copy(update={"cards": dict(sorted({**start.cards, card: entry}.items()))})


def _rounded(efficiency: KernelEfficiency) -> KernelEfficiency:
    return KernelEfficiency(**{k: round(max(getattr(efficiency, k), 1e-4), 4) for k in KERNEL_CLASSES})


# ---------------------------------------------------------------- checking the model on records
def pairs(runs: list[TimedRun], terms: StepTimeTerms | None = None) -> list[dict[str, Any]]:
    """Predicted vs measured per run (ratio = measured / predicted), with the terms behind each prediction."""
    out = []
    for run in runs:
        step = run.predict(terms)
        out.append({"run_id": run.run_id, "model": run.profile.name, "plan": run.plan.name, "gpu": run.gpu.name,
                    "num_gpus": run.plan.hardware.num_gpus, "engine": engine_label(run.plan), "capped": run.capped,
                    "measured_s": run.measured_s, "predicted_s": step.seconds,
                    "ratio": run.measured_s / step.seconds if step.seconds else math.inf,
                    "measured_optimizer_s": run.measured_optimizer_s,
                    "predicted_optimizer_s": step.optimizer_step_seconds,
                    "terms": {k: v for k, v in step.breakdown.items() if v}})
    return out


def engine_label(plan: Plan) -> str:
    engine = plan.engine
    if engine.kind == "pytorch":
        return "pytorch" if plan.hardware.num_gpus == 1 else "ddp"
    offload = [x for x, on in (("opt", engine.offload_optimizer != "none"), ("param", engine.offload_params != "none")) if on]
    return f"zero{engine.zero_stage}" + (f"+offload-{'+'.join(offload)}" if offload else "")


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks; None under 2 points or no spread."""
    if len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if not sxx or not syy:
        return None
    return sxy / math.sqrt(sxx * syy)


def accuracy(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Spearman rho, the share within +-30% and +-50% (|predicted - measured| / measured), the median
    measured/predicted ratio and the largest relative error, over rows of ``pairs``."""
    if not rows:
        return {"runs": 0, "spearman": None, "within_30": None, "within_50": None, "median_ratio": None,
                "max_abs_error": None}
    errors = [abs(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in rows]
    return {"runs": len(rows),
            "spearman": spearman([r["predicted_s"] for r in rows], [r["measured_s"] for r in rows]),
            "within_30": sum(e <= 0.3 for e in errors) / len(errors),
            "within_50": sum(e <= 0.5 for e in errors) / len(errors),
            "median_ratio": statistics.median(r["ratio"] for r in rows), "max_abs_error": max(errors)}


@dataclass(frozen=True)
class RankCheck:
    """Predicted vs measured step times over probe records."""

    pairs: list[dict[str, Any]]
    metrics: dict[str, float | None]
    skipped: list[str]

    @property
    def spearman(self) -> float | None:
        return self.metrics["spearman"]

    @property
    def median_ratio(self) -> float | None:
        return self.metrics["median_ratio"]

    def summary(self) -> str:
        m = self.metrics

        def show(key: str, fmt: str) -> str:
            return "n/a" if m.get(key) is None else format(m[key], fmt)

        return (f"{len(self.pairs)} records: Spearman rho {show('spearman', '.3f')}, within 30% "
                f"{show('within_30', '.0%')}, within 50% {show('within_50', '.0%')}, median measured/predicted "
                f"{show('median_ratio', '.2f')}{f'; skipped {len(self.skipped)}' if self.skipped else ''}")


def rank_check(records: Iterable[dict[str, Any]], terms: StepTimeTerms | None = None) -> RankCheck:
    """The model against probe records (memplan.probe.records.read_records), each timed on its own card
    (environment.gpu_name matched to the catalogue, else the plan's)."""
    runs, skipped = timed_runs(records)
    rows = pairs(runs, terms)
    return RankCheck(rows, accuracy(rows), skipped)


__all__ = ["HOST_CORES_PER_GPU", "RankCheck", "TimedRun", "accuracy", "fit", "fit_card", "is_calibration", "pairs",
           "rank_check", "spearman", "timed_runs"]


def describe(terms: StepTimeTerms) -> str:
    """One line: the fitted efficiencies of the default card and the host terms."""
    e = terms.for_card("default")
    shown = ", ".join(f"{k} {getattr(e, k):.0%}" for k in KERNEL_CLASSES)
    sample = terms.in_sample
    fit = (f"; in-sample Spearman {sample['spearman']:.2f}, within 30% {sample['within_30']:.0%}"
           if sample.get("spearman") is not None and "within_30" in sample else "")
    return (f"efficiency {shown}; module call {terms.module_call_s * 1e6:.0f} us, ZeRO-3 hook "
            f"{terms.zero3_fetch_s * 1e6:.0f} us, CPU Adam {terms.cpu_adam_params_per_core_s:.2g} params/s/core{fit}")


def describe_card(entry) -> str:
    """One line: a card's own step-time fit (memplan.spec.calibration.CardStepTerms)."""
    e = entry.efficiency
    shown = ", ".join(f"{k} {getattr(e, k):.0%}" for k in KERNEL_CLASSES)
    sample = entry.in_sample
    fit = (f"; in-sample ({entry.records} {entry.side or ''} runs) Spearman {sample['spearman']:.2f}, within 30% "
           f"{sample['within_30']:.0%}" if sample.get("spearman") is not None and "within_30" in sample else "")
    return (f"efficiency {shown}; module call {entry.module_call_s * 1e6:.0f} us, ZeRO-3 hook "
            f"{entry.zero3_fetch_s * 1e6:.0f} us, CPU Adam {entry.cpu_adam_params_per_core_s:.2g} params/s/core{fit}")
