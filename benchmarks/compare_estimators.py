#!/usr/bin/env python3
"""memplan beside DeepSpeed's model-state estimators and a weights-only estimate, on probe records.

For each successful record: the measured peak allocated memory (max over ranks), memplan's estimate,
DeepSpeed's estimate_zero2/zero3_model_states_mem_needs (deepspeed/runtime/zero/stage_1_and_2.py,
stage3.py; called for real when DeepSpeed imports, with every parameter counted as DeepSpeed's
`_all_live` helpers do) and a weights-only estimate like `accelerate estimate-memory` (parameters x
dtype bytes; its "training" figure is 4x that). Prints a Markdown table and the median |error| of each.

    python benchmarks/compare_estimators.py reports/probes/split/heldout.jsonl
"""

from __future__ import annotations

import statistics
import sys

from memplan.probe.calibrate import load_measurements
from memplan.estimate.peak import estimate
from memplan.spec.loading import load_calibration

GIB = 2**30


def deepspeed_estimate(m) -> int | None:
    """DeepSpeed's own model-state formula for the record's stage (stages 0/1 use the ZeRO-2 formula)."""
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except Exception:  # noqa: BLE001 - DeepSpeed absent: no column
        return None
    total = m.profile.param_count()
    engine, gpus = m.plan.engine, m.plan.hardware.num_gpus
    if engine.kind != "deepspeed":
        return None
    if engine.zero_stage == 3:
        largest = max(m.profile.llm.embedding_params if m.profile.llm else 0, 1)
        return estimate_zero3_model_states_mem_needs(
            total, largest, num_gpus_per_node=gpus, cpu_offload=engine.offload_optimizer != "none",
            cpu_offload_params=engine.offload_params != "none")[1]
    return estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=gpus,
                                                 cpu_offload=engine.offload_optimizer != "none")[1]


def main() -> None:
    calibration = load_calibration(None)
    rows, errors = [], {"memplan": [], "deepspeed": [], "weights": [], "weights x4": []}
    for m in load_measurements(sys.argv[1:]):
        if m.status != "ok" or m.profile.name.startswith("tiny"):
            continue
        ours = estimate(m.profile, m.plan, calibration).peak_allocated_bytes
        ds = deepspeed_estimate(m)
        weights = m.profile.param_count() * 2
        cells = {"memplan": ours, "deepspeed": ds, "weights": weights, "weights x4": 4 * weights}
        for key, value in cells.items():
            if value is not None:
                errors[key].append(abs(value - m.allocated) / m.allocated)
        p = m.plan
        label = f"{m.profile.name} {p.engine.kind}{'-z' + str(p.engine.zero_stage) if p.engine.kind == 'deepspeed' else ''}" \
                f" off={p.engine.offload_optimizer}/{p.engine.offload_params} {p.hardware.num_gpus} GPU T={p.inputs.text_tokens}"
        rows.append((label, m.allocated, cells))
    print("| run | measured GiB | memplan | DeepSpeed estimator | weights only | weights x4 |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, measured, cells in rows:
        def fmt(v):
            return "n/a" if v is None else f"{v / GIB:.2f} ({(v - measured) / measured * 100:+.0f}%)"
        print(f"| {label} | {measured / GIB:.2f} | " + " | ".join(fmt(cells[k]) for k in cells) + " |")
    print()
    for key, values in errors.items():
        if values:
            print(f"- {key}: median |error| {statistics.median(values) * 100:.1f}%, max {max(values) * 100:.1f}% ({len(values)} runs)")


if __name__ == "__main__":
    main()
