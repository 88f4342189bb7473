"""The calibration terms for the plan's card: calibration keyed by card family.

The context (device used - reserved of one process) depends on the card's architecture family and
its driver, not on the plan. profiles/calibration.yaml holds the terms fitted on one family
(``family``) and, under ``families``, the context/NCCL terms fitted per family; profiles/gpus.yaml
gives each family a context size, measured or stated as an assumption. For a plan naming its card
(hardware.gpu) the estimate takes, in order: the calibration's own family, the family's fitted terms,
the catalogue's context for the family (with its source as the note); no card named: the terms as
they are (fitted on the calibration's card).
"""

from __future__ import annotations

from memplan.spec.calibration import Calibration
from memplan.spec.cards import family_of

_CACHE: dict[tuple[int, str | None], tuple[Calibration, Calibration, str]] = {}


def calibration_for_card(calibration: Calibration, gpu: str | None) -> tuple[Calibration, str]:
    """(terms, where the context comes from) for a plan on ``gpu`` (a catalogue name or None)."""
    key = (id(calibration), gpu)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is calibration:
        return hit[1], hit[2]
    terms, source = _resolve(calibration, gpu)
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[key] = (calibration, terms, source)
    return terms, source


def _resolve(calibration: Calibration, gpu: str | None) -> tuple[Calibration, str]:
    family = family_of(gpu)
    fitted_on = calibration.card or "the calibration's card"
    if family is None:
        return calibration, f"context fitted on {fitted_on}"
    if calibration.family == family.name:
        return calibration, f"context fitted on {fitted_on} ({family.name})"
    fitted = calibration.families.get(family.name)
    if fitted is not None:
        update = {"context_bytes": fitted.context_bytes, "nccl_bytes": fitted.nccl_bytes}
        return calibration.model_copy(update=update), f"context fitted on {fitted.records} {family.name} records"
    note = (f"no {family.name} calibration: default terms (fitted on {fitted_on}), "
            f"{family.name} context from profiles/gpus.yaml ({family.source.split(':')[0]})")
    return calibration.model_copy(update={"context_bytes": family.context_bytes}), note
