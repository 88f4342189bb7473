"""``memplan search --engines``: every engine choice on 1..--max-nodes nodes, side by side.

Prints the matrix (per-rank GiB the card must hold, per engine and node count; a cross marks OOM or
host RAM exceeded), then the compare report of each engine's fitting plan on the fewest nodes
(memplan.report.compare, written under --out like `memplan compare`).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from memplan.cli.options import console
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile


def matrix_table(cells, title: str) -> Table:
    from memplan.spec.units import format_gib

    nodes = sorted({c.nodes for c in cells})
    table = Table(title=title)
    table.add_column("engine")
    for n in nodes:
        table.add_column(f"{n} node{'s' if n > 1 else ''}", justify="right")
    by_key = {(c.choice, c.nodes): c for c in cells}
    for choice in dict.fromkeys(c.choice for c in cells):
        row = []
        for n in nodes:
            cell = by_key.get((choice, n))
            row.append("" if cell is None else f"{format_gib(cell.estimate.needed_bytes)} {'ok' if cell.fits else 'x'}")
        table.add_row(choice, *row)
    return table


def engines_search(profile: Profile, base: Plan, *, gpus_per_node: int, vram_gib: float, max_nodes: int,
                   gpu, calibration, output_format, out: Path | None, force: bool = False, wide: bool = False) -> None:
    from memplan.cli.outputs import ReportFormat, write_outputs
    from memplan.planning.evaluate import evaluate
    from memplan.planning.scale import fewest_nodes, sweep
    from memplan.report.compare import Report

    cells = sweep(profile, base, gpus_per_node=gpus_per_node, vram_gib=vram_gib, max_nodes=max_nodes, gpu=gpu,
                  calibration=calibration)
    chosen = fewest_nodes(cells)
    fastest = min((c.step.per_sample for c in chosen), default=None)
    rows = [evaluate(profile, c.plan, calibration=calibration, reference=base, baseline_seconds=fastest,
                     result=c.estimate, step=c.step, knobs={"engine": c.choice, "nodes": c.nodes}, with_advice=False)
            for c in chosen]
    notes = [f"{len(cells)} estimates ({profile.name}, {gpus_per_node} GPUs of {vram_gib:g} GiB per node, host RAM "
             f"{base.hardware.host_ram_gib:g} GiB per node); rows: each engine's fitting plan on the fewest nodes",
             "FSDP2 step time is ZeRO-3's with the same offload (same collectives; memplan/planning/scale.py)"]
    if output_format is not ReportFormat.json:
        console().print(matrix_table(cells, f"memplan search --engines: GiB per rank the card must hold "
                                            f"({profile.name}, {gpus_per_node} x {vram_gib:g} GiB per node)"))
    report = Report(f"memplan search --engines: {profile.name}, each engine on the fewest nodes that fit", rows,
                    base.name, notes, kind="engines")
    if not rows:
        typer.echo(f"no engine fits on up to {max_nodes} nodes of {gpus_per_node} x {vram_gib:g} GiB")
    write_outputs(report, output_format, out, extra_json={"cells": [c.to_dict() for c in cells]}, force=force, wide=wide)
