"""One number story: the rows that sum to the number the verdict compares with the VRAM, the line
that says which of the allocated, reserved and device views decides, and the advice in a few lines.

The verdict is ``needed_bytes <= vram_bytes`` (memplan.estimate.overhead.needed_bytes):

    needed = allocated terms (the component rows) + fitted constant (cuBLAS workspaces, small tensors)
           + allocator: what the caching allocator cannot give back under pressure
             (allocated x pressure_ratio + pressure_block x largest block; without a fitted
             pressure_ratio, the reserved pool's excess: reserved - allocated)
           + CUDA context + NCCL communicator (several GPUs, or DeepSpeed on one)

so ``overhead_rows`` below are exactly the difference between the component rows and needed_bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memplan.estimate.overhead import uses_nccl
from memplan.spec.units import GIB, format_gib

if TYPE_CHECKING:
    from memplan.estimate.peak import Estimate
    from memplan.planning.advice import Advice, Change

ADVICE_COUNT = 3


def overhead_rows(estimate: "Estimate") -> list[tuple[str, int]]:
    """(label, bytes) rows between the allocated terms and needed_bytes; they sum exactly to it."""
    calibration = estimate.calibration
    context = calibration.context_bytes
    nccl = (calibration.nccl_bytes + estimate.nccl_extra_bytes  # + communicators across nodes (multinode)
            if uses_nccl(estimate.num_gpus, estimate.deepspeed) else 0)
    constant = calibration.allocated_constant_bytes
    allocator = estimate.needed_bytes - estimate.peak_allocated_bytes - context - nccl
    rows = [("fitted constant (workspaces)", constant)] if constant else []
    if estimate.expandable_segments:
        label = "allocator (stranded pages, expandable segments)"
    else:
        label = ("allocator (kept under pressure)" if calibration.pressure_ratio is not None
                 else "allocator (reserved - allocated)")
    rows.append((label, allocator))
    rows.append(("CUDA context", context))
    if nccl:
        rows.append(("NCCL communicator", nccl))
    return rows


def views_line(estimate: "Estimate") -> str:
    """Allocated, reserved and device, and which one decides the verdict."""
    decides = "needed decides the verdict" if estimate.calibration.pressure_ratio is not None else (
        "needed (= device: no pressure ratio fitted) decides the verdict")
    return (f"views: allocated {format_gib(estimate.peak_allocated_bytes)} GiB (max_memory_allocated), "
            f"reserved {format_gib(estimate.peak_reserved_bytes)}, device {format_gib(estimate.device_bytes)} "
            f"(nvidia-smi, roomy card); {decides}: {format_gib(estimate.needed_bytes)}")


LEGEND = ("needed = allocated + allocator (kept under pressure) + CUDA context + NCCL; "
          "less than device: cached blocks are freed first")
LEGEND_EXPANDABLE = ("needed = allocated + allocator (pages stranded under expandable segments) + CUDA context + NCCL; "
                     "free pages are unmapped before an allocation fails")


def legend(estimate: "Estimate") -> str:
    """The line under the table saying what needed is made of, for the plan's allocator."""
    return LEGEND_EXPANDABLE if estimate.expandable_segments else LEGEND



def shown_parts(parts: list[int], total: int) -> list[str]:
    """GiB texts (0.01) for ``parts`` that add up to the shown ``total`` (largest remainder: each part
    rounded down, the hundredths left over go to the parts with the largest remainders), so a column of
    rows sums to its total on the page as it does in bytes (parts must sum to total)."""
    unit = GIB / 100
    floors = [int(part // unit) for part in parts]
    left = round(total / unit) - sum(floors)
    order = sorted(range(len(parts)), key=lambda i: -(parts[i] / unit - floors[i]))
    for i in order[:max(left, 0)]:
        floors[i] += 1
    return [f"{hundredths / 100:.2f}" for hundredths in floors]


def story_rows(estimate: "Estimate") -> dict[str, Any]:
    """The JSON form: component rows, overhead rows, and their sum (= needed_bytes)."""
    overheads = overhead_rows(estimate)
    return {"allocated_terms_bytes": estimate.peak.total,
            "overheads": [{"row": label, "bytes": value} for label, value in overheads],
            "needed_bytes": estimate.peak.total + sum(value for _, value in overheads)}


def cheapest(advice: "Advice", count: int = ADVICE_COUNT) -> list["Change"]:
    """The changes that fit, those clear of the tight band first, then cheapest: least fidelity given up,
    fewest tokens lost, no new hardware, then least slowdown (memplan.planning.advice.Advice.by_sacrifice)."""
    return advice.by_sacrifice()[:count]


def change_line(change: "Change", original: "Estimate") -> str:
    """'ZeRO-3: saves 5.47 GiB (needs 19.30, 4.70 spare); costs 1.12x time per sample; gives up nothing'."""
    saves = original.needed_bytes - change.estimate.needed_bytes
    cost = f"{change.slowdown:.2f}x time per sample" if abs(change.slowdown - 1) >= 0.005 else "no slowdown"
    return (f"{change.label}: saves {format_gib(saves)} GiB (needs {format_gib(change.estimate.needed_bytes)}, "
            f"{format_gib(change.estimate.headroom_bytes)} spare{', tight' if change.estimate.tight else ''}); "
            f"costs {cost}; gives up {change.gives_up}")


def advice_lines(advice: "Advice", count: int = ADVICE_COUNT) -> list[str]:
    """What to change, in a few lines (empty when the plan fits clear of the tight band)."""
    if advice.estimate.clear_fit:
        return []
    settle = [advice.settle.line()] if advice.settle else []
    changes = cheapest(advice, count)
    if not changes:
        return ([line for line in advice.diagnosis if line.startswith("no single change")] or [
            "no single change or pair fits: `memplan search` explores combinations"]) + settle
    head = (f"the {len(changes)} cheapest changes that fit ({len(advice.changes)} of {advice.tried} tried fit; "
            "more: `memplan search`):")
    return [head, *(f"  {i}. {change_line(c, advice.estimate)}" for i, c in enumerate(changes, 1)), *settle]


def advice_json(advice: "Advice", count: int = ADVICE_COUNT) -> list[dict[str, Any]]:
    return [{**c.to_dict(), "saves_bytes": advice.estimate.needed_bytes - c.estimate.needed_bytes}
            for c in cheapest(advice, count)]
