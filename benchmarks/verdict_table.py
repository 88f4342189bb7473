#!/usr/bin/env python3
"""The verdict table of docs/accuracy.md: every run under --vram-cap, what the estimate says it needs,
the verdict, what happened, and which split it is in.

    python benchmarks/verdict_table.py reports/probes/split
"""

from __future__ import annotations

import sys
from pathlib import Path

from memplan.probe.calibrate import compare, load_measurements
from memplan.spec.loading import load_calibration
from memplan.spec.units import format_gib


def describe(plan) -> str:
    engine = f"ZeRO-{plan.engine.zero_stage}" if plan.engine.kind == "deepspeed" else "PyTorch"
    if plan.engine.offload_optimizer != "none":
        engine += " + opt. offload"
    inputs = plan.inputs
    ckpt = "ckpt" if plan.components.llm.checkpointing else "no ckpt"
    return (f"{engine}, {plan.hardware.num_gpus} GPU, text {inputs.text_tokens}, {inputs.tiles} tiles, "
            f"SAM2 {inputs.sam2_resolution}, {inputs.objects} obj, mb {inputs.micro_batch}, {ckpt}")


def main() -> None:
    split = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/probes/split")
    calibration = load_calibration(None)
    rows = []
    for part in ("calibration", "heldout"):
        for c in compare(load_measurements([split / f"{part}.jsonl"]), calibration):
            verdict = c.verdict_under_cap()
            if verdict is None:
                continue
            cap = c.measured.vram_cap_bytes
            rows.append((c.estimate.needed_bytes / cap, part, c, verdict))
    print("| split | model | plan | needs GiB (of 24) | verdict | ran | correct |")
    print("|---|---|---|---:|---|---|---|")
    for _, part, c, (predicted, measured) in sorted(rows, key=lambda r: r[0]):
        mark = "yes" if predicted == measured else ("**no: optimistic**" if predicted == "fits" else "no: pessimistic")
        print(f"| {part} | {c.measured.profile.name} | {describe(c.measured.plan)} | "
              f"{format_gib(c.estimate.needed_bytes)} | {predicted} | {measured} | {mark} |")
    total = len(rows)
    right = sum(p == m for *_, (p, m) in rows)
    optimistic = sum(p == "fits" and m == "oom" for *_, (p, m) in rows)
    print(f"\n{right}/{total} correct, {optimistic} 'fits' that ran out of memory "
          f"(pressure_ratio {calibration.pressure_ratio}, pressure_block {calibration.pressure_block})")


if __name__ == "__main__":
    main()
