"""Render an Estimate as a rich table, Markdown or JSON. Bytes become GiB only here."""

from __future__ import annotations

import json
from collections import defaultdict

from rich.console import Group
from rich.table import Table
from rich.text import Text

from memplan.estimate.peak import Estimate
from memplan.spec.units import format_gib
from memplan.spec.vocabulary import Category, Component, Verdict


SHORT = {
    Category.WEIGHTS: "weights", Category.TRAINABLE_WEIGHTS: "trainable", Category.GRADIENTS: "grads",
    Category.OPTIMIZER_STATE: "optim", Category.MASTER_WEIGHTS: "master", Category.ACTIVATIONS: "activ",
    Category.TRANSIENT: "transient", Category.DEEPSPEED_BUFFERS: "ds bufs", Category.FSDP_BUFFERS: "fsdp bufs",
}


def _matrix(estimate: Estimate) -> tuple[list[Component], list[Category], dict[tuple[Component, Category], int]]:
    cells: dict[tuple[Component, Category], int] = defaultdict(int)
    for term in estimate.breakdown():
        cells[(term.component, term.category)] += term.bytes
    components = [c for c in Component if any(cells.get((c, k)) for k in Category)]
    categories = [k for k in Category if any(cells.get((c, k)) for c in Component)]
    return components, categories, cells


def verdict_text(estimate: Estimate) -> str:
    margin = format_gib(abs(estimate.headroom_bytes))
    if estimate.verdict is Verdict.FITS:
        return f"FITS with {margin} GiB to spare"
    return f"OOM by {margin} GiB"


def summary_lines(estimate: Estimate) -> list[str]:
    dominant = ", ".join(
        f"{t.component.value} {t.category.value} {format_gib(t.bytes)} GiB" for t in estimate.dominant(3)
    )
    phases = "  ".join(f"{p.phase.value} {format_gib(p.total)}" for p in estimate.phases)
    host = f"{format_gib(estimate.host_bytes)} of {format_gib(estimate.host_ram_bytes)} GiB"
    return [
        f"peak phase: {estimate.peak_phase.value} ({estimate.peak.moment.label}); dominated by {dominant}",
        f"per GPU: allocated {format_gib(estimate.peak_allocated_bytes)} GiB, reserved "
        f"{format_gib(estimate.peak_reserved_bytes)} GiB, device (nvidia-smi, roomy card) "
        f"{format_gib(estimate.device_bytes)} GiB; needs {format_gib(estimate.needed_bytes)} GiB of "
        f"{format_gib(estimate.vram_bytes)} GiB (cached blocks given back under pressure), "
        f"headroom {format_gib(estimate.headroom_bytes)} GiB",
        f"phases (allocated GiB): {phases}",
        f"host RAM (node): {host}{'' if estimate.host_fits else '  (exceeds host RAM)'}",
        *_per_node_lines(estimate),
    ]


def _per_node_lines(estimate: Estimate) -> list[str]:
    """Multi-node plans and pinned host memory: what one node holds (host_bytes is already per node)."""
    if estimate.nodes == 1 and not estimate.host_pinned_bytes:
        return []
    per_node = estimate.num_gpus // estimate.nodes
    return [f"per node: {per_node} ranks of {estimate.num_gpus} on {estimate.nodes} node(s); host RAM "
            f"{format_gib(estimate.host_bytes)} GiB of which pinned {format_gib(estimate.host_pinned_bytes)} GiB"]


def _hardware(estimate: Estimate) -> str:
    if estimate.nodes == 1:
        return f"{estimate.num_gpus} GPU(s)"
    return f"{estimate.nodes} nodes x {estimate.num_gpus // estimate.nodes} GPUs"


def estimate_table(estimate: Estimate) -> Group:
    components, categories, cells = _matrix(estimate)
    table = Table(title=f"{estimate.profile_name} / {estimate.plan_name}: peak per GPU (GiB) at "
                        f"{estimate.peak_phase.value}, {_hardware(estimate)}")
    table.add_column("component")
    for category in categories:
        table.add_column(SHORT[category], justify="right")
    table.add_column("total", justify="right", style="bold")
    for component in components:
        row = [cells.get((component, k), 0) for k in categories]
        table.add_row(component.value, *[format_gib(b) if b else "" for b in row], format_gib(sum(row)))
    totals = [sum(cells.get((c, k), 0) for c in components) for k in categories]
    table.add_row("total", *[format_gib(b) for b in totals], format_gib(sum(totals)), style="bold")
    style = "bold green" if estimate.verdict is Verdict.FITS else "bold red"
    return Group(table, Text(verdict_text(estimate), style=style), *[Text(line) for line in summary_lines(estimate)])


def estimate_markdown(estimate: Estimate) -> str:
    components, categories, cells = _matrix(estimate)
    head = "| component | " + " | ".join(k.value for k in categories) + " | total |"
    rule = "|---|" + "---:|" * (len(categories) + 1)
    rows = []
    for component in components:
        row = [cells.get((component, k), 0) for k in categories]
        rows.append(f"| {component.value} | " + " | ".join(format_gib(b) if b else "" for b in row)
                    + f" | {format_gib(sum(row))} |")
    totals = [sum(cells.get((c, k), 0) for c in components) for k in categories]
    rows.append("| **total** | " + " | ".join(format_gib(b) for b in totals) + f" | **{format_gib(sum(totals))}** |")
    lines = [f"## {estimate.profile_name} / {estimate.plan_name}", "", f"**{verdict_text(estimate)}**", "",
             head, rule, *rows, "", *[f"- {line}" for line in summary_lines(estimate)]]
    return "\n".join(lines) + "\n"


def estimate_json(estimate: Estimate) -> str:
    return json.dumps(estimate.to_dict(), indent=2)


def _stack_line(stack: dict) -> str:
    assumed = f"; assumed: {'; '.join(stack['assumptions'])}" if stack["assumptions"] else ""
    return (f"stack {stack['kind']}: adapters {stack['adapters']}, embeddings {stack['embeddings_training']}, "
            f"input-grad hooks {stack['input_grad_hooks']}, outputs kept {'yes' if stack['keeps_outputs'] else 'no'}, "
            f"attention {stack['attention']}, loss {stack['loss']}{assumed}")


def sinks_text(stack: dict, sinks: list) -> str:
    """The stack's behaviours and the memory sinks it implies, one line each (rich markup-safe)."""
    from rich.markup import escape

    lines = [escape(_stack_line(stack))]
    if sinks:
        lines.append("memory your code spends that you can get back (per GPU, at the peak):")
        for sink in sinks:
            note = "" if sink.measured else " (modelled, not measured)"
            lines.append(escape(f"  - {sink.name}: {format_gib(sink.saved_bytes)} GiB{note}: {sink.what}."))
            lines.append(escape(f"    change: {sink.change}"))
    return "\n".join(lines)


def sinks_markdown(stack: dict, sinks: list) -> str:
    out = [f"\n{_stack_line(stack)}\n"]
    if sinks:
        out.append("\n| memory sink | saves (GiB) | what the code does | change |\n|---|---:|---|---|\n")
        for sink in sinks:
            out.append(f"| {sink.name} | {format_gib(sink.saved_bytes)} | {sink.what} | `{sink.change}` |\n")
    return "".join(out)


def with_stack_json(document: str, *, stack: dict, sinks: list) -> str:
    """The estimate's JSON with the resolved stack and its sinks (bytes as integers)."""
    data = json.loads(document)
    data["stack"] = stack
    data["sinks"] = [{"name": s.name, "saved_bytes": s.saved_bytes, "what": s.what, "change": s.change,
                      "knob": s.knob, "measured": s.measured} for s in sinks]
    return json.dumps(data, indent=2)
