"""The one seam for evaluating a plan: estimate, step time, fidelity, what it gives up, advice, fits.

    profile + plan -> evaluate() -> Evaluation -> memplan.report (renders only)

`memplan estimate`, `compare` and `search` and every report go through here, so "fits" and the
per-phase bytes a chart draws have one definition each (memplan.estimate.peak: Estimate.fits,
phase_needed_bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memplan.estimate.peak import Estimate, estimate, phase_needed_bytes
from memplan.planning.advice import Advice, advise
from memplan.planning.fidelity import GivesUp, fidelity, gives_up
from memplan.planning.search import SearchResult
from memplan.planning.sinks import Sink, find_sinks, stack_summary
from memplan.planning.steptime import StepTime, step_time
from memplan.spec.calibration import Calibration
from memplan.spec.gpus import GpuSpec, gpu_for
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Verdict


@dataclass(frozen=True)
class Evaluation:
    """One plan evaluated: its estimate, step time, fidelity and what it gives up against a
    reference plan, and advice when it does not fit."""

    profile: Profile
    plan: Plan
    estimate: Estimate
    step: StepTime
    slowdown: float  # time per sample / the baseline's (1.0 without one)
    fidelity: float  # against the reference plan
    gives_up: GivesUp
    advice: Advice | None
    knobs: dict[str, Any] | None = None  # search candidates: the knob values
    stack: dict[str, Any] | None = None  # the resolved training stack (memplan.planning.sinks.stack_summary)
    sinks: list[Sink] | None = None  # memory the stack spends that one code change gets back
    dataset_samples: int | None = None  # --dataset-samples: time (and with a price: cost) per epoch
    price: float | None = None  # per GPU-hour

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    @property
    def outcome(self) -> str:
        """FITS, OOM (the card) or HOST OOM (the node's RAM); "(tight)" within the tight band of the card."""
        tight = " (tight)" if self.estimate.tight else ""
        if self.estimate.verdict is Verdict.OOM:
            return "OOM" + tight
        return ("FITS" + tight) if self.estimate.host_fits else "HOST OOM"

    @property
    def phase_needed_bytes(self) -> dict[str, int]:
        """What the card must hold at each phase's peak (memplan.estimate.peak.phase_needed_bytes)."""
        return phase_needed_bytes(self.estimate)


def evaluate(
    profile: Profile,
    plan: Plan,
    *,
    calibration: Calibration | None,
    gpu: GpuSpec | None = None,
    reference: Plan,
    baseline_seconds: float | None = None,
    result: Estimate | None = None,
    step: StepTime | None = None,
    knobs: dict[str, Any] | None = None,
    with_advice: bool = True,
    with_sinks: bool = False,
    dataset_samples: int | None = None,
    price: float | None = None,
) -> Evaluation:
    """Evaluate ``plan`` on ``gpu`` (default: the plan's card, memplan.spec.gpus.gpu_for), fidelity and
    what it gives up against ``reference``, slowdown against ``baseline_seconds`` per sample; advice
    only when it does not fit; the stack and its memory sinks with ``with_sinks``. ``result`` and ``step``
    reuse what a caller (the search) computed."""
    result = result or estimate(profile, plan, calibration)
    step = step or step_time(profile, plan, gpu or gpu_for(plan.hardware.gpu, plan.hardware.vram_gib),
                             terms=calibration.step_time if calibration else None)
    slowdown = step.per_sample / baseline_seconds if baseline_seconds else 1.0
    advice = advise(profile, plan, calibration, result=result) if with_advice and not result.clear_fit else None
    stack = stack_summary(profile, plan) if with_sinks else None
    sinks = find_sinks(profile, plan, calibration=calibration, result=result) if with_sinks else None
    return Evaluation(profile, plan, result, step, slowdown, fidelity(plan, reference),
                      gives_up(profile, plan, reference), advice, knobs, stack, sinks, dataset_samples, price)


def evaluate_side_by_side(entries: list[tuple[Profile, Plan]], *, reference: Plan, calibration: Calibration | None,
                          dataset_samples: int | None = None, price: float | None = None) -> list[Evaluation]:
    """Plans side by side (`memplan compare`): slowdown is against the first plan."""
    rows: list[Evaluation] = []
    for profile, plan in entries:
        first = rows[0].step.per_sample if rows else None
        rows.append(evaluate(profile, plan, calibration=calibration, reference=reference, baseline_seconds=first,
                             dataset_samples=dataset_samples, price=price))
    return rows


def evaluate_front(profile: Profile, result: SearchResult, *, calibration: Calibration | None, top: int,
                   dataset_samples: int | None = None, price: float | None = None) -> list[Evaluation]:
    """The ``top`` most faithful plans of a search's front, slowdown against the front's fastest,
    fidelity against the search's base plan (they all fit: no advice)."""
    front = sorted(result.front, key=lambda c: -c.fidelity)[:top]
    fastest = min((c.seconds_per_sample for c in result.front), default=None)
    return [evaluate(profile, c.plan, calibration=calibration, reference=result.base_plan, baseline_seconds=fastest,
                     result=c.estimate, step=c.step, knobs=c.knobs.to_dict(), with_advice=False,
                     dataset_samples=dataset_samples, price=price) for c in front]
