#!/usr/bin/env python3
"""Pooled step-time accuracy over every pre-registered step-time batch: measured steady step / predicted step.

Each batch pairs its records with the predictions file committed before it ran (reports/probes/history.yaml
names them), for the card the runs were made on. Two pools:

- ``own``: each card's own fitted terms (the H200 sets b, c and c again; the H100 sets e to k);
- ``of-its-day``: every pre-registered run with the model that was shipped when it was predicted, which adds
  set d (an H100 predicted with the default terms, before the H100 had terms of its own);
- ``frozen``: sets h, i and j, one step-time model (fd1efd9), the test of issue 14's criteria fixed before they ran;
- ``same-model``: those and set k, drawn after that test was called and predicted by the same model.

Usage: python benchmarks/steptime_pool.py [--pool own|of-its-day|frozen|same-model] [--rows]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # steptime_batch (it adds scripts/ itself)
PROBES = ROOT / "reports" / "probes"
PREDICTIONS = PROBES / "predictions"

# batch, records, the predictions file that applies (the card's own terms, pre-registered), the run set
OWN: list[tuple[str, Path, Path, str]] = [
    ("h200-steptime-b", PROBES / "h200-steptime-b.jsonl", PREDICTIONS / "steptime-h200-b.json", "b"),
    ("h200-steptime-c", PROBES / "h200-steptime-c.jsonl", PREDICTIONS / "steptime-h200-c.json", "c"),
    ("h200-steptime-c2", PROBES / "h200-steptime-c2.jsonl", PREDICTIONS / "steptime-h200-c.json", "c"),
    ("h100-steptime-e", PROBES / "h100-steptime-e.jsonl", PREDICTIONS / "steptime-h100-e2.json", "e"),
    ("h100-steptime-f", PROBES / "h100-steptime-f.jsonl", PREDICTIONS / "steptime-h100-f.json", "f"),
    ("h100-steptime-g", PROBES / "h100-steptime-g.jsonl", PREDICTIONS / "steptime-h100-g.json", "g"),
    ("h100-steptime-h", PROBES / "h100-steptime-h.jsonl", PREDICTIONS / "steptime-h100-h.json", "h"),
    ("h100-steptime-i", PROBES / "h100-steptime-i.jsonl", PREDICTIONS / "steptime-h100-i.json", "i"),
    ("h100-steptime-j", PROBES / "h100-steptime-j.jsonl", PREDICTIONS / "steptime-h100-j.json", "j"),
    ("h100-steptime-k", PROBES / "h100-steptime-k.jsonl", PREDICTIONS / "steptime-h100-k.json", "k"),
]
OF_ITS_DAY = OWN + [
    ("h100-steptime-d", PROBES / "h100-steptime-d.jsonl", PREDICTIONS / "steptime-h100-d.json", "d"),
]
# The test of issue 14's criteria, fixed before its runs (docs/accuracy.md, "Pre-registered and waiting"): sets h, i
# and j, all predicted by the step-time model frozen at fd1efd9, each scored against the file of the card it ran on.
def on_each_card(*set_names: str) -> list[tuple[str, Path, Path, str]]:
    """The pool entries of these sets on either card, each set's records against the file of the card they ran on
    (a card whose records file does not exist is skipped by pooled_rows)."""
    return [(f"{card}-steptime-{set_name}", PROBES / f"{card}-steptime-{set_name}.jsonl",
             PREDICTIONS / f"steptime-{card}-{set_name}.json", set_name)
            for set_name in set_names for card in ("h100", "h200")]


FROZEN = on_each_card("h", "i", "j")
# Every set predicted by that one model, the frozen test's and set k (drawn after the test was called): h to k.
SAME_MODEL = on_each_card("h", "i", "j", "k")
POOLS = {"own": OWN, "of-its-day": OF_ITS_DAY, "frozen": FROZEN, "same-model": SAME_MODEL}


def pooled_rows(*, pool: list[tuple[str, Path, Path, str]]) -> list[dict]:
    """One row per scored run: batch, run, measured and predicted steady step seconds, their ratio."""
    from steptime_batch import SETS, read_predictions, scored

    from memplan.spec.record import steady_step_seconds

    rows = []
    for batch, records, predictions_path, set_name in pool:
        if not records.exists():
            continue
        predictions = read_predictions(path=predictions_path)
        for record in scored(path=records, runs=SETS[set_name]):
            measured = steady_step_seconds(record.get("ranks") or [], record.get("plan") or {})
            predicted = predictions["runs"].get(record["_batch_name"], {}).get("predicted_s")
            if measured and predicted:
                rows.append({"batch": batch, "run": record["_batch_name"], "measured_s": measured,
                             "predicted_s": predicted, "ratio": measured / predicted})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", choices=sorted(POOLS), default="own")
    parser.add_argument("--rows", action="store_true", help="print every run, not only the summary")
    args = parser.parse_args()
    from memplan.planning.stepfit import accuracy

    rows = pooled_rows(pool=POOLS[args.pool])
    if args.rows:
        for row in rows:
            print(f"{row['batch']:18} {row['run']:24} {row['measured_s']:8.3f} {row['predicted_s']:8.3f} "
                  f"{row['ratio']:6.2f}")
    if not rows:
        print(f"pool {args.pool}: no scored run yet (its records are not in {PROBES.relative_to(ROOT)})")
        return 0
    metrics = accuracy(rows)
    batches = sorted({row["batch"] for row in rows})
    print(f"pool {args.pool}: {metrics['runs']} runs in {len(batches)} batches, Spearman {metrics['spearman']:.3f}, "
          f"within 30% {metrics['within_30']:.0%}, within 50% {metrics['within_50']:.0%}, median measured/predicted "
          f"{metrics['median_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
