"""Host RAM when the user did not give it: this machine's total RAM (psutil.virtual_memory().total),
and a note saying so. A value from --host-ram, or from the user's own plan file (or a file it
inherits from other than the official recipe, whose 512 GiB describe the official node), wins."""

from __future__ import annotations

from pathlib import Path

from memplan.spec.units import GIB


def total_ram_gib() -> float:
    """Total physical RAM of this machine in GiB (psutil.virtual_memory().total, bytes)."""
    import psutil

    return round(psutil.virtual_memory().total / GIB, 2)


def machine_host_ram_gib() -> float:
    """The host RAM memplan assumes when none is given (tests pin it: tests/conftest.py)."""
    return total_ram_gib()


def plan_states_host_ram(plan_file: str | None) -> bool:
    """True when the plan file the user named sets hardware.host_ram_gib (memplan.spec.inherit.states)."""
    if plan_file is None:
        return False
    from memplan.spec import inherit
    from memplan.spec.loading import plan_path, read_document

    return inherit.states(plan_path(plan_file), "hardware", "host_ram_gib", read=read_document, locate=plan_path)


def host_ram_choice(host_ram: float | None, plan_file: str | None) -> tuple[float | None, str]:
    """(host RAM in GiB to put in the plan, or None to keep the plan's; the note the output shows)."""
    if host_ram is not None:
        return host_ram, "given with --host-ram"
    if plan_states_host_ram(plan_file):
        return None, f"from {Path(plan_file).name}"
    gib = machine_host_ram_gib()
    return gib, "this machine's, psutil; set with --host-ram"
