"""Step time beside an estimate: one line for tables and Markdown, a ``step_time`` object for JSON."""

from __future__ import annotations

import json

from memplan.planning.steptime import REPEAT_SPREAD, StepTime


def step_line(step: StepTime, dataset_samples: int | None = None) -> str:
    """'step 0.57 s on h100-sxm: 7.0 samples/s, 28,700 tokens/s (largest: framework 0.45 s); epoch 3.9 h'."""
    top = max(step.breakdown.items(), key=lambda item: item[1])
    epoch = f"; epoch of {dataset_samples:,} samples {step.epoch_seconds(dataset_samples) / 3600:.1f} h" \
        if dataset_samples else ""
    return (f"step time {step.seconds:.2f} s on {step.gpu} ({step.num_gpus} GPU{'s' if step.num_gpus > 1 else ''}): "
            f"{step.samples_per_s:.2f} samples/s, {step.tokens_per_s:,.0f} tokens/s "
            f"(largest term: {top[0]} {top[1]:.2f} s; memplan.planning.steptime){epoch}{untuned_text(step)}")


def untuned_text(step: StepTime) -> str:
    """What a step time is good for. On a card without terms of its own (docs/benchmarks.md, 2026-12-06: there
    the pre-registered runs were ranked right and sized 1.5-2x off): comparing plans. On one with terms: sizing,
    within what two runs of one plan have differed by (steptime.REPEAT_SPREAD)."""
    if step.card_terms:
        return f"; runs of one plan have differed by up to {REPEAT_SPREAD:.2f}x (docs/benchmarks.md)"
    return (f"; default terms, no per-card fit for {step.gpu}: compare plans by it, "
            "do not schedule by it (docs/benchmarks.md)")


def with_step_json(document: str, step: StepTime, dataset_samples: int | None = None) -> str:
    """The estimate's JSON with ``step_time``: seconds, samples/s, tokens/s, breakdown (+ epoch_seconds)."""
    data = json.loads(document)
    data["step_time"] = step.to_dict(dataset_samples)
    return json.dumps(data, indent=2)
