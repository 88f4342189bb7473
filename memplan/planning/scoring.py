"""Score predictions against the records of the runs they predicted (`memplan score`).

A prediction (memplan.planning.protocol, schema memplan.prediction/1) matches the record whose
``run_key`` equals its own (the batch runner stamps it), or whose ``run_id`` equals the prediction's
``run_id`` (predictions converted from an older format). Per run: predicted vs measured peak allocated
(max over ranks), the error, and under a VRAM cap the verdict (fits iff the run ended ok, oom iff it
ran out of memory), each labelled with its side (memplan.planning.protocol.side_of). No torch here.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from memplan.spec.allocator import record_plan_document, unmodelled_options
from memplan.planning.protocol import plan_differences, plan_fingerprints, side_of


@dataclass(frozen=True)
class ScoredRun:
    run_key: str
    name: str
    model: str
    side: str | None  # None: no record (the run did not happen)
    status: str | None  # the record's status: ok, oom, error, timeout
    card: str | None  # the catalogue name of the card the run ran on
    stack: str  # the plan's stack kind and engine, e.g. sa2va/deepspeed-z2
    capped: bool
    predicted_allocated: int | None
    measured_allocated: int | None
    predicted_verdict: str | None
    measured_verdict: str | None  # fits / oom under a cap; None uncapped or errored
    needed_over_capacity: float | None  # predicted needed / capacity: the verdict's margin
    plan_matches: bool | None  # the record ran the plan that was predicted (see plan_check)
    plan_differences: tuple[str, ...] = ()  # the fields that differ, where the prediction carries its plan
    predicted_tight: bool | None = None  # the verdict was predicted within the tight band (None: not recorded)

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured peak allocated, for runs that trained (status ok)."""
        if self.status != "ok" or not self.measured_allocated or self.predicted_allocated is None:
            return None
        return (self.predicted_allocated - self.measured_allocated) / self.measured_allocated

    @property
    def verdict_right(self) -> bool | None:
        if self.predicted_verdict is None or self.measured_verdict is None:
            return None
        return self.predicted_verdict == self.measured_verdict

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error, "verdict_right": self.verdict_right}


def _card_name(record: dict[str, Any]) -> str | None:
    from memplan.spec.gpus import match_device_name

    device = (record.get("environment") or {}).get("gpu_name")
    spec = match_device_name(device)
    return spec.name if spec else device


def _stack(plan: dict[str, Any]) -> str:
    engine = plan.get("engine") or {}
    kind = (plan.get("stack") or {}).get("kind", "sa2va")
    label = (f"deepspeed-z{engine.get('zero_stage')}" if engine.get("kind") == "deepspeed"
             else str(engine.get("kind") or "pytorch"))  # pytorch, fsdp2
    return f"{kind}/{label}"


def _measured_allocated(record: dict[str, Any]) -> int:
    summary = record.get("summary") or {}
    if summary.get("peak_allocated_bytes"):
        return int(summary["peak_allocated_bytes"])
    values = [int(r.get("max_allocated_bytes") or 0) for rank in record.get("ranks", [])
              for r in (rank.get("phases") or {}).values()]
    return max(values, default=0)


def score_run(prediction: dict[str, Any], record: dict[str, Any] | None) -> ScoredRun:
    predicted = prediction.get("predicted") or {}
    capped = prediction.get("vram_cap") is not None
    capacity = prediction.get("capacity_bytes")
    needed = predicted.get("needed_bytes")
    common = dict(run_key=prediction["run_key"], name=str(prediction.get("name", prediction["run_key"])),
                  model=str(prediction.get("model")), capped=capped,
                  predicted_allocated=predicted.get("peak_allocated_bytes"),
                  predicted_verdict=predicted.get("verdict") if capped else None,
                  needed_over_capacity=needed / capacity if needed and capacity else None,
                  predicted_tight=predicted.get("tight") if capped else None)
    if record is None:
        return ScoredRun(side=None, status=None, card=None, stack="", measured_allocated=None,
                         measured_verdict=None, plan_matches=None, **common)
    status = record.get("status")
    modelled = not unmodelled_options((record.get("environment") or {}).get("alloc_conf"))
    measured_verdict = {"ok": "fits", "oom": "oom"}.get(status) if capped and modelled else None
    matches, differences = plan_check(prediction, record)
    return ScoredRun(side=side_of(str(record.get("run_id"))), status=status, card=_card_name(record),
                     stack=_stack(record.get("plan") or {}), measured_allocated=_measured_allocated(record),
                     measured_verdict=measured_verdict, plan_matches=matches, plan_differences=differences,
                     **common)


def plan_check(prediction: dict[str, Any], record: dict[str, Any]) -> tuple[bool | None, tuple[str, ...]]:
    """(the record ran the predicted plan, the fields that differ). The fields that matter are compared:
    not the labels (name, description), not the capacity fields the record does not carry from the run
    set (vram_gib, gpu, host_ram_gib), and not fields added to the Plan schema after the prediction was
    written where the record holds them at the value the older schema meant (protocol.LATER_PLAN_FIELDS:
    a probe newer than the prediction records hardware.nodes 1, engine.zero_hpz_partition_size 1 and
    engine.fsdp null for the same run). A prediction that carries its plan document is compared field by
    field; one that carries only a fingerprint matches either fingerprint of the record's plan."""
    plan = record_plan_document(record) if record.get("plan") else None
    if not plan:
        return None, ()
    if isinstance(prediction.get("plan"), dict):
        differences = tuple(plan_differences(prediction["plan"], plan))
        return not differences, differences
    fingerprint = prediction.get("plan_fingerprint")
    if not fingerprint:
        return None, ()
    return fingerprint in plan_fingerprints(plan), ()


def score(predictions: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[ScoredRun]:
    """Every prediction with its record (by run_key, else run_id); a prediction without one scores as not run."""
    by_key = {r["run_key"]: r for r in records if r.get("run_key")}
    by_id = {str(r.get("run_id")): r for r in records}
    out = []
    for prediction in predictions:
        record = by_key.get(prediction["run_key"])
        if record is None and prediction.get("run_id"):
            record = by_id.get(str(prediction["run_id"]))
        out.append(score_run(prediction, record))
    return out


def summarize(runs: list[ScoredRun]) -> dict[str, Any]:
    """Counts, allocated median/max |error| and verdicts right/optimistic of a group of runs."""
    errors = [abs(e) for r in runs if (e := r.error) is not None]
    verdicts = [r for r in runs if r.verdict_right is not None]
    return {
        "runs": len(runs), "recorded": sum(r.status is not None for r in runs),
        "allocated": {"count": len(errors), "median_abs_error": statistics.median(errors) if errors else None,
                      "max_abs_error": max(errors) if errors else None},
        "verdicts": {"count": len(verdicts), "right": sum(bool(r.verdict_right) for r in verdicts),
                     "fits_that_ran_oom": sum(r.predicted_verdict == "fits" and r.measured_verdict == "oom"
                                              for r in verdicts)},
        "plan_mismatches": sum(r.plan_matches is False for r in runs),
    }


def grouped(runs: list[ScoredRun]) -> dict[str, dict[str, Any]]:
    """summarize() over all runs, by side, by the tight band where the predictions carry it (a verdict
    predicted clear of it, or within it), and by stack/card."""
    groups: dict[str, list[ScoredRun]] = {"all": list(runs)}
    for side in ("calibration", "held-out"):
        members = [r for r in runs if r.side == side]
        if members:
            groups[f"side: {side}"] = members
    for label, flag in (("clear of the tight band", False), ("within the tight band", True)):
        members = [r for r in runs if r.predicted_tight is flag]
        if members:
            groups[f"verdict predicted {label}"] = members
    for run in sorted((r for r in runs if r.side is not None), key=lambda r: (r.stack, str(r.card))):
        groups.setdefault(f"stack/card: {run.stack} on {run.card or 'cpu'}", []).append(run)
    return {name: summarize(members) for name, members in groups.items()}
