"""The fault hook for tests and demos: ``MEMPLAN_PROBE_FAULT`` makes one rank exit or hang.

Spellings (docs/faults.md):
- ``RANK:CODE``: rank RANK exits with CODE at once, before it measures anything;
- ``RANK:CODE@PHASE``: it exits on entering PHASE of the second step (init: at once), after one full
  step was recorded, while its peers carry on into a collective;
- ``hang`` in place of CODE: the rank sleeps instead of exiting (the launcher's timeout ends it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from memplan.probe.distributed import world
from memplan.spec.vocabulary import Phase

FAULT_ENV = "MEMPLAN_PROBE_FAULT"
FAULT_STEP = 1  # the second step: the first one is recorded whole
HANG_S = 10**6


@dataclass(frozen=True)
class Fault:
    """Which rank fails, how (an exit code, or None: hang) and where (a phase, or None: at start)."""

    rank: int
    code: int | None
    phase: str | None


def planned_fault(value: str | None = None) -> Fault | None:
    """The fault ``value`` (default: the environment's MEMPLAN_PROBE_FAULT) asks for; None when unset."""
    value = os.environ.get(FAULT_ENV, "") if value is None else value
    if not value:
        return None
    who, _, phase = value.partition("@")
    rank, _, code = who.partition(":")
    try:
        return Fault(rank=int(rank), code=None if code == "hang" else int(code), phase=phase or None)
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={value!r}: expected RANK:CODE, RANK:hang, optionally @PHASE") from None


def _trigger(fault: Fault) -> None:
    where = fault.phase or "start"
    print(f"memplan probe: injected fault on rank {fault.rank} at {where} ({FAULT_ENV}="
          f"{os.environ.get(FAULT_ENV, '')})", flush=True)
    if fault.code is None:
        time.sleep(HANG_S)
    os._exit(fault.code if fault.code is not None else 1)


def at_start(rank: int) -> None:
    """Exit or hang this rank now if the hook names it without a phase."""
    fault = planned_fault()
    if fault is not None and fault.phase is None and fault.rank == rank:
        _trigger(fault)


def at_phase(phase: Phase, step: int | None) -> None:
    """Exit or hang this rank on entering ``phase`` of the second step (init: step None) if named."""
    fault = planned_fault()
    if fault is None or fault.phase != phase.value or fault.rank != world()[0]:
        return
    if step is None or step == FAULT_STEP:
        _trigger(fault)
