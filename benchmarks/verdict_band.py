"""Capped verdicts near the card under the default caching allocator, by LLM checkpointing.

Every capped record of reports/probes/history.yaml run without PYTORCH_CUDA_ALLOC_CONF, estimated with
today's model (in-sample for everything fitted on them): needed / capacity, the outcome, and whether the
verdict went the other way, sorted by needed / capacity; then, for the runs within --band of the card,
the wrong verdicts split by checkpointing (optimistic: predicted to fit, ran out).

    python benchmarks/verdict_band.py [--band 0.05]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rescore  # noqa: E402  (benchmarks/rescore.py: the history, the record -> estimate path)


def capped_rows() -> list[dict]:
    """One row per capped default-allocator record: needed/capacity under today's estimate and the outcome."""
    rows = []
    for batch, record, measured, estimate in rescore.estimated_records():
        if not measured.vram_cap_bytes or (record.get("environment") or {}).get("alloc_conf"):
            continue
        needed = estimate.needed_bytes / measured.vram_cap_bytes
        rows.append({"batch": batch["batch"], "run": record.get("run_key") or record["run_id"],
                     "needed": needed, "oom": measured.status == "oom",
                     "checkpointing": measured.plan.components.llm.checkpointing,
                     "stack": rescore.stack_label(record), "wrong": (needed > 1) != (measured.status == "oom")})
    return sorted(rows, key=lambda row: row["needed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--band", type=float, default=0.05, help="half-width around the card (default 0.05)")
    band = parser.parse_args().band
    near = [row for row in capped_rows() if abs(row["needed"] - 1) < band]
    for row in near:
        print(f"{row['needed']:.3f} {'oom' if row['oom'] else 'fits':4} {'WRONG' if row['wrong'] else '':5} "
              f"ck={row['checkpointing']!s:5} {row['stack']:24} {row['batch']:16} {row['run']}")
    for checkpointing in (True, False):
        group = [row for row in near if row["checkpointing"] is checkpointing]
        wrong = [row for row in group if row["wrong"]]
        optimistic = sum(row["needed"] <= 1 for row in wrong)
        print(f"checkpointing {'on' if checkpointing else 'off'}: {len(group)} runs within {band:.0%}, "
              f"{len(wrong)} wrong ({optimistic} optimistic, {len(wrong) - optimistic} pessimistic)")


if __name__ == "__main__":
    main()
