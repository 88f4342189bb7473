#!/usr/bin/env python3
"""Score the replay's verdicts (benchmarks/trace_runset.py's replay.json, committed before the capped runs)
against the capped records of the same run set, beside the estimate's (`memplan predict`'s file).

    python benchmarks/score_replay.py reports/probes/predictions/replay-b-replay.json \
        reports/probes/h100-replay-b.jsonl --estimate reports/probes/predictions/replay-b.jsonl

The replay file may also be benchmarks/family_batch.py's (replay-f-family.json: one default-allocator verdict
per run, from a trace synthesized at the run's length), or benchmarks/settle_batch.py's settle.json (the same
shape). Prints one row per run (outcome, the replay's verdict under the default allocator, the estimate's, with
its needed/capacity) and the counts right. Records made under an allocator option other than expandable segments
are skipped (memplan.spec.allocator.unmodelled_options), as `memplan score` skips them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUTCOME = {"ok": "fits", "oom": "oom"}


def _gib(value: int | None) -> float | None:
    return None if value is None else value / 2**30


def score(replay_file: Path, records_file: Path, estimate_file: Path | None) -> list[dict]:
    from memplan.probe.records import read_records
    from memplan.spec.allocator import unmodelled_options

    replayed = json.loads(replay_file.read_text())
    batch = replayed["batch"]
    records = {r.get("run_key"): r for r in read_records(records_file)}
    from memplan.planning.protocol import read_predictions

    estimates = {entry["run_key"]: entry for entry in read_predictions(estimate_file)} if estimate_file else {}
    rows = []
    for run in replayed["runs"]:
        key = f"{batch}/{run['name']}"
        record = records.get(key)
        if record is None or unmodelled_options((record.get("environment") or {}).get("alloc_conf")):
            continue
        estimate = estimates.get(key, {})
        predicted = estimate.get("predicted") or {}
        rows.append({"run": run["name"], "outcome": OUTCOME.get(record["status"], record["status"]),
                     # replay.json keeps each setting's verdict; family_batch's file (replay-f) the default's only
                     "replay": (run.get("default") or {}).get("verdict", run.get("verdict")),
                     "replay_split512": (run.get("max_split_size_mb:512") or {}).get("verdict"),
                     "replay_smallest_gib": _gib((run.get("default") or {}).get("smallest_limit_bytes")),
                     "limit_gib": _gib(run.get("limit_bytes")),
                     "estimate": predicted.get("verdict"),
                     "needed_share": (predicted["needed_bytes"] / estimate["capacity_bytes"]
                                      if predicted.get("needed_bytes") and estimate.get("capacity_bytes") else None)})
    return rows


def report(rows: list[dict]) -> list[str]:
    """The rows as a Markdown table, then each side's count right and optimistic."""
    lines = ["| run | outcome | replay (smallest limit / limit GiB) | replay: max_split 512 | estimate (needed / card) |",
             "|---|---|---|---|---|"]
    for row in rows:
        share = f"{row['needed_share']:.3f}" if row["needed_share"] else ""
        limits = (f" ({row['replay_smallest_gib']:.2f} / {row['limit_gib']:.2f})"
                  if row["replay_smallest_gib"] is not None and row["limit_gib"] is not None else "")
        lines.append(f"| {row['run']} | {row['outcome']} | {row['replay']}{limits} | {row['replay_split512'] or ''} | "
                     f"{row['estimate']} ({share}) |")
    scored = [row for row in rows if row["outcome"] in ("fits", "oom")]
    for who in ("replay", "estimate"):
        right = sum(row[who] == row["outcome"] for row in scored)
        optimistic = sum(row[who] == "fits" and row["outcome"] == "oom" for row in scored)
        lines.append(f"{who}: {right} of {len(scored)} right, {optimistic} optimistic")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("replay", type=Path)
    parser.add_argument("records", type=Path)
    parser.add_argument("--estimate", type=Path)
    args = parser.parse_args()
    print("\n".join(report(score(args.replay, args.records, args.estimate))))


if __name__ == "__main__":
    main()
