"""Charts for compare/search reports (matplotlib, imported lazily; optional: ``pip install '.[charts]'``).

- memory by category: one stacked bar per plan, the peak moment's terms summed per category, plus
  what the allocator and the CUDA context add (device view minus allocated terms), against the VRAM;
- phase timeline: each plan's device view at init, forward, backward and optimizer step.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import TYPE_CHECKING

from memplan.spec.units import GIB
from memplan.spec.vocabulary import Category, Phase

if TYPE_CHECKING:
    from memplan.planning.evaluate import Evaluation

COLORS = {
    Category.WEIGHTS: "#4c72b0", Category.TRAINABLE_WEIGHTS: "#64b5cd", Category.GRADIENTS: "#dd8452",
    Category.OPTIMIZER_STATE: "#c44e52", Category.MASTER_WEIGHTS: "#8172b3", Category.ACTIVATIONS: "#55a868",
    Category.TRANSIENT: "#ccb974", Category.DEEPSPEED_BUFFERS: "#937860", Category.FSDP_BUFFERS: "#a6761d",
}
OVERHEAD = "overhead"  # what the allocator, the CUDA context and NCCL add: needed minus the allocated terms
OVERHEAD_COLOR = "#8c8c8c"
PHASES = (Phase.INIT, Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)
MISSING = "matplotlib is not installed: charts skipped (pip install matplotlib, or '.[charts]')"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(figure)
    return buffer.getvalue()


def _labels(rows: list["Evaluation"]) -> list[str]:
    """One distinct label per plan: its name when every name is short and unique, else '#i name..'
    (search names share long prefixes: truncated alone they would all read the same)."""
    names = [row.name for row in rows]
    if len(set(names)) == len(names) and all(len(name) <= 22 for name in names):
        return names
    return [f"#{i} {name if len(name) <= 18 else name[:16] + '..'}" for i, name in enumerate(names, 1)]


def memory_by_category(rows: list["Evaluation"]) -> bytes:
    """Stacked bars (GiB) of the peak moment per category, plus overhead up to the device view."""
    return _png(memory_figure(rows))


def memory_figure(rows: list["Evaluation"]):
    """The figure of memory_by_category: one bar per plan at x = 0, 1, ... (never merged by label)."""
    plt = _pyplot()
    per_row = []
    for row in rows:
        cells: dict[str, int] = defaultdict(int)
        for term in row.estimate.breakdown():
            cells[term.category.value] += term.bytes
        cells[OVERHEAD] += max(row.estimate.needed_bytes - sum(cells.values()), 0)
        per_row.append(cells)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 3), 4.8))
    labels = _labels(rows)
    positions = list(range(len(rows)))
    bottoms = [0.0] * len(rows)
    colors = {**{category.value: color for category, color in COLORS.items()}, OVERHEAD: OVERHEAD_COLOR}
    for name, color in colors.items():
        heights = [cells.get(name, 0) / GIB for cells in per_row]
        if not any(heights):
            continue
        axes.bar(positions, heights, bottom=bottoms, color=color, label=name, width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, row in enumerate(rows):
        vram = row.estimate.vram_bytes / GIB
        axes.hlines(vram, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
        axes.text(i, bottoms[i] + 0.2, row.outcome, ha="center", va="bottom", fontsize=8,
                  color="#1a7f37" if row.fits else "#c62828")
    axes.set_ylabel("GiB per GPU (needed on the card, peak moment)")
    axes.set_title("Memory by category at each plan's peak (dashed: VRAM)")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.set_xticks(positions, labels)
    axes.tick_params(axis="x", labelrotation=20, labelsize=8)
    return figure


def phase_timeline(rows: list["Evaluation"]) -> bytes:
    """Device view (GiB) at each phase of a step, one line per plan, with each plan's VRAM."""
    return _png(phase_figure(rows))


def phase_figure(rows: list["Evaluation"]):
    """The figure of phase_timeline: one line and one distinct legend entry per plan."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    names = [p.value for p in PHASES]
    vrams = set()
    markers = "osD^vP*X"
    styles = ("-", "--", "-.", ":")
    for index, (label, row) in enumerate(zip(_labels(rows), rows)):
        by_phase = row.phase_needed_bytes
        offset = (index - (len(rows) - 1) / 2) * 0.03  # plans with equal phases stay visible
        xs = [i for i, p in enumerate(names) if p in by_phase]
        ys = [by_phase[names[i]] / GIB for i in xs]
        axes.plot([x + offset for x in xs], ys, marker=markers[index % len(markers)],
                  linestyle=styles[index % len(styles)], label=f"{label} ({row.outcome})")
        vrams.add(row.estimate.vram_bytes / GIB)
    for vram in sorted(vrams):
        axes.axhline(vram, color="black", linestyle="dashed", linewidth=1)
        axes.text(len(names) - 1, vram, f" VRAM {vram:g} GiB", va="bottom", ha="right", fontsize=8)
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel("GiB per GPU (needed on the card)")
    axes.set_title("Phase timeline of one training step")
    axes.legend(fontsize=7)
    return figure


def render_all(rows: list["Evaluation"], prefix: str) -> dict[str, tuple[str, bytes]]:
    """{title: (file name, PNG bytes)} for both charts; empty when matplotlib is missing."""
    if not rows or not available():
        return {}
    return {
        "Memory by category": (f"{prefix}-memory.png", memory_by_category(rows)),
        "Phase timeline": (f"{prefix}-phases.png", phase_timeline(rows)),
    }
