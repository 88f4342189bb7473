#!/usr/bin/env python3
"""memplan beside DeepSpeed's and accelerate's estimators on the same probe records, fairly.

Per successful record (status ok; peak allocated per GPU, max over ranks):
- memplan: the estimate's peak allocated bytes (today's shipped calibration).
- DeepSpeed, model states only: deepspeed/runtime/zero/stage_1_and_2.py
  estimate_zero2_model_states_mem_needs (ZeRO 0-2) or stage3.py estimate_zero3_model_states_mem_needs,
  called for real and fed the record's real trainable count (record["parameters"], counted on the built
  model): its 18 bytes per parameter of gradients, fp32 masters and Adam moments apply to the trainable
  parameters, plus 2 bytes per frozen parameter (its "params_16bit" term; sharded at stage 3). It covers
  model states only: no activations, no buffers, so it is expected to be low.
- accelerate estimate-memory: accelerate/commands/estimate.py estimate_training_usage, called for
  real on the record's parameter bytes (fp32, "bfloat16" mixed precision); its "Training using Adam"
  figure is the largest of its terms. It assumes every parameter trains, so it applies to full
  fine-tuning only (n/a for LoRA runs).

    python benchmarks/compare_estimators.py                      # held-out side, Markdown table
    python benchmarks/compare_estimators.py --part all reports/probes/h100-*.jsonl
"""

from __future__ import annotations

import argparse
import runpy
import statistics
from pathlib import Path

from memplan.estimate.peak import estimate
from memplan.probe.calibrate import measured_from_record
from memplan.probe.records import read_records
from memplan.spec.loading import load_calibration

GIB = 2**30
ROOT = Path(__file__).resolve().parents[1]


def counts(record: dict) -> tuple[int, int]:
    """(trainable, frozen) parameters the probe counted on the built model."""
    parameters = record.get("parameters") or {}
    return sum((parameters.get("trainable") or {}).values()), sum((parameters.get("frozen") or {}).values())


def deepspeed_model_states(m, trainable: int, frozen: int) -> int | None:
    """DeepSpeed's model-state estimate on GPU, fed the real trainable count (see the module docstring)."""
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except Exception:  # noqa: BLE001 - DeepSpeed absent: no column
        return None
    engine, gpus = m.plan.engine, m.plan.hardware.num_gpus
    if engine.kind != "deepspeed" or not trainable:
        return None
    offload = engine.offload_optimizer != "none"
    if engine.zero_stage == 3:
        largest = max(m.profile.llm.embedding_params if m.profile.llm else 0, 1)
        states = estimate_zero3_model_states_mem_needs(trainable, largest, num_gpus_per_node=gpus, cpu_offload=offload,
                                                       cpu_offload_params=engine.offload_params != "none")[1]
        return states + 2 * frozen // gpus
    return estimate_zero2_model_states_mem_needs(trainable, num_gpus_per_node=gpus, cpu_offload=offload)[1] + 2 * frozen


def accelerate_training(trainable: int, frozen: int) -> int | None:
    """accelerate estimate-memory's "Training using Adam" figure, for full fine-tuning only."""
    if frozen:
        return None
    try:
        from accelerate.commands.estimate import estimate_training_usage
    except Exception:  # noqa: BLE001 - accelerate absent: no column
        return None
    return int(max(estimate_training_usage(4 * trainable, "bfloat16").values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="*", type=Path)
    parser.add_argument("--part", default="held-out", help="formulas-seen, calibration, held-out or all")
    args = parser.parse_args()
    rescore = runpy.run_path(str(ROOT / "benchmarks" / "rescore.py"))
    parts = {row["run_id"]: row["part"] for row in rescore["score_rows"]()}
    paths = args.records or sorted((ROOT / "reports" / "probes").glob("h100-*.jsonl"))
    calibration = load_calibration(None)
    rows, errors = [], {"memplan": [], "deepspeed": [], "accelerate": []}
    for path in paths:
        for record in read_records(path):
            part = parts.get(record["run_id"])
            if record["status"] != "ok" or part is None or (args.part != "all" and part != args.part):
                continue
            m = measured_from_record(record, str(path))
            trainable, frozen = counts(record)
            cells = {"memplan": estimate(m.profile, m.plan, calibration).peak_allocated_bytes,
                     "deepspeed": deepspeed_model_states(m, trainable, frozen),
                     "accelerate": accelerate_training(trainable, frozen)}
            for key, value in cells.items():
                if value is not None:
                    errors[key].append(abs(value - m.allocated) / m.allocated)
            p = m.plan
            engine = f"ZeRO-{p.engine.zero_stage}" if p.engine.kind == "deepspeed" else "PyTorch"
            offload = " + opt. offload" if p.engine.offload_optimizer != "none" else ""
            label = f"{m.profile.name}, {engine}{offload}, {p.hardware.num_gpus} GPU, text {p.inputs.text_tokens}"
            rows.append((record["run_id"][-8:], part, label, m.allocated, trainable, cells))
    print("| run | part | plan | measured GiB | trainable params | memplan | DeepSpeed (model states only) | "
          "accelerate (full fine-tuning only) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for run, part, label, measured, trainable, cells in rows:
        def fmt(v):
            return "n/a" if v is None else f"{v / GIB:.2f} ({(v - measured) / measured * 100:+.0f}%)"
        print(f"| {run} | {part} | {label} | {measured / GIB:.2f} | {trainable / 1e6:.1f}M | "
              + " | ".join(fmt(cells[k]) for k in cells) + " |")
    print()
    for key, values in errors.items():
        if values:
            print(f"- {key}: median |error| {statistics.median(values) * 100:.1f}%, max {max(values) * 100:.1f}% "
                  f"({len(values)} runs)")


if __name__ == "__main__":
    main()
