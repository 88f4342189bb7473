#!/usr/bin/env python3
"""Re-score every probe record with honest labels (issue 12): the tables of docs/accuracy.md, and the
bounds the CI regression test holds them to (tests/test_accuracy_bounds.py).

Each scored record (status ok/oom, not a tiny-* fixture) falls in one part:
- formulas-seen: its batch is one the allocated-memory formulas were fixed against
  (reports/probes/history.yaml, formulas: seen): in-sample for the allocated figure;
- calibration / held-out: otherwise, its side by the hash of its run id (memplan.planning.protocol.side_of);
  the shipped calibration is fitted on the calibration side only (memplan calibrate's default).
Pre-registered verdicts are scored as they were predicted (the predictions files), not with today's model.

    python benchmarks/rescore.py                      # Markdown tables for docs/accuracy.md
    python benchmarks/rescore.py --write-bounds       # reports/probes/bounds.yaml from today's maxima
    python benchmarks/rescore.py --legacy-predictions h100-verdicts3 > /tmp/v3.jsonl
    memplan score /tmp/v3.jsonl reports/probes/h100-verdicts3.jsonl   # the set scored as predicted
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from memplan.estimate.peak import estimate
from memplan.planning.protocol import scored, side_of
from memplan.probe.calibrate import measured_from_record
from memplan.probe.records import read_records
from memplan.spec.loading import load_calibration

ROOT = Path(__file__).resolve().parents[1]
HISTORY = ROOT / "reports" / "probes" / "history.yaml"
BOUNDS = ROOT / "reports" / "probes" / "bounds.yaml"
PARTS = ("formulas-seen", "calibration", "held-out")


def load_history() -> dict[str, Any]:
    return yaml.safe_load(HISTORY.read_text())


def part_of(run_id: str, batch: dict[str, Any]) -> str:
    return "formulas-seen" if batch["formulas"] == "seen" else side_of(run_id)


def score_rows(calibration=None) -> list[dict[str, Any]]:
    """One row per scored record of every batch: errors of today's estimate, verdict under a cap."""
    calibration = calibration or load_calibration(None)
    rows = []
    for batch in load_history()["batches"]:
        for path in batch["files"]:
            for record in read_records(ROOT / path):
                if not scored(record["model"], record["status"]):
                    continue
                m = measured_from_record(record, path)
                e = estimate(m.profile, m.plan, calibration)
                ok = m.status == "ok"
                cap = m.vram_cap_bytes
                rows.append({
                    "run_id": m.run_id, "batch": batch["batch"], "part": part_of(m.run_id, batch),
                    "side": side_of(m.run_id), "model": m.profile.name, "status": m.status, "capped": bool(cap),
                    "command": record.get("command", ""),
                    "allocated_error": (e.peak_allocated_bytes - m.allocated) / m.allocated if ok and m.allocated else None,
                    "device_error": (e.device_bytes - m.device) / m.device if ok and not cap and m.device else None,
                    "verdict": ("oom" if e.needed_bytes > cap else "fits", "oom" if m.status == "oom" else "fits")
                    if cap else None,
                })
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    alloc = [abs(r["allocated_error"]) for r in rows if r["allocated_error"] is not None]
    device = [abs(r["device_error"]) for r in rows if r["device_error"] is not None]
    verdicts = [r["verdict"] for r in rows if r["verdict"]]

    def stats(values):
        return {"count": len(values), "median": statistics.median(values) if values else None,
                "max": max(values) if values else None}

    return {"records": len(rows), "allocated": stats(alloc), "device": stats(device),
            "verdicts": {"count": len(verdicts), "right": sum(p == m for p, m in verdicts),
                         "optimistic": sum(p == "fits" and m == "oom" for p, m in verdicts)}}


def legacy_verdicts(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A pre-registered verdict set as predicted: each prediction matched to its record by model and flags."""
    predictions = json.loads((ROOT / batch["predictions"]).read_text())["runs"]
    records = [r for path in batch["files"] for r in read_records(ROOT / path)]
    out = []
    for p in predictions:
        flags = " ".join(p["flags"])
        match = [r for r in records if r["model"] == p["model"] and f" {flags} --vram-cap" in r["command"]]
        status = match[0]["status"] if match else None
        out.append({"name": p["name"], "model": p["model"], "run_id": match[0]["run_id"] if match else None, "predicted": p["verdict"],
                    "ran": {"ok": "fits", "oom": "oom"}.get(status), "needed_bytes": p["needed_bytes"]})
    return out


def legacy_prediction_lines(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A pre-registered verdict set as memplan.prediction/1 lines (matched by run id), for `memplan score`.
    Only the verdict was predicted then: the allocated figure is left out (None)."""
    out = []
    for run in legacy_verdicts(batch):
        if run["run_id"] is None:
            continue
        out.append({"schema": "memplan.prediction/1", "batch": batch["batch"], "run_key": f"{batch['batch']}/{run['name']}",
                    "run_id": run["run_id"], "name": run["name"], "model": run["model"], "vram_cap": 24.0,
                    "capacity_bytes": 24 * 2**30, "predicted": {"needed_bytes": run["needed_bytes"],
                                                                "verdict": run["predicted"]},
                    "estimator_revision": "see reports/probes/history.yaml", "source": batch["predictions"]})
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _alloc_cell(s: dict[str, Any]) -> str:
    a = s["allocated"]
    return f"{_pct(a['median'])} / {_pct(a['max'])} ({a['count']})" if a["count"] else "n/a"


def markdown(rows: list[dict[str, Any]]) -> str:
    history = load_history()
    lines = ["| batch | date | card | n | formulas | pre-registered | allocated median / max (runs) | verdicts (today's model) |",
             "|---|---|---|---:|---|---|---|---|"]
    for batch in history["batches"]:
        s = summarize([r for r in rows if r["batch"] == batch["batch"]])
        v = s["verdicts"]
        verdicts = f"{v['right']}/{v['count']}" if v["count"] else ""
        lines.append(f"| {batch['batch']} | {batch['date']} | {batch['card']} | {s['records']} | {batch['formulas']} | "
                     f"{batch['pre_registered']} | {_alloc_cell(s)} | {verdicts} |")
    lines += ["", "| part | label | records | allocated median / max (runs) | device median / max (runs) | "
              "verdicts right (optimistic) |", "|---|---|---:|---|---|---|"]
    labels = {"formulas-seen": "in-sample: the allocated formulas were fixed on these",
              "calibration": "in-sample for the calibration (fitted on this side); allocated out of sample",
              "held-out": "held out from the formulas and from the calibration"}
    for part in PARTS:
        s = summarize([r for r in rows if r["part"] == part])
        d, v = s["device"], s["verdicts"]
        device = f"{_pct(d['median'])} / {_pct(d['max'])} ({d['count']})" if d["count"] else "n/a"
        lines.append(f"| {part} | {labels[part]} | {s['records']} | {_alloc_cell(s)} | {device} | "
                     f"{v['right']}/{v['count']} ({v['optimistic']}) |")
    original = set(history["original_heldout_run_ids"])
    s = summarize([r for r in rows if r["run_id"] in original])
    lines += ["", f"Original held-out third (818cc97), today's model: {s['records']} scored records, allocated "
              f"{_alloc_cell(s)}."]
    frozen = summarize([r for r in rows if r["part"] != "formulas-seen"])
    lines.append(f"All records after the formulas were frozen: allocated {_alloc_cell(frozen)}.")
    for batch in history["batches"]:
        if batch.get("predictions"):
            runs = legacy_verdicts(batch)
            scored_runs = [r for r in runs if r["ran"]]
            right = sum(r["predicted"] == r["ran"] for r in scored_runs)
            optimistic = sum(r["predicted"] == "fits" and r["ran"] == "oom" for r in scored_runs)
            lines.append(f"Pre-registered {batch['batch']} ({batch['predictions']}): {right} of {len(scored_runs)} "
                         f"verdicts right as predicted, {optimistic} optimistic.")
    return "\n".join(lines) + "\n"


def _ceil(value: float | None) -> float | None:
    return None if value is None else math.ceil(value * 1000 + 1e-9) / 1000


def bounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Today's maxima per part, rounded up to 0.1%: what docs/accuracy.md publishes and CI holds."""
    out: dict[str, Any] = {"schema": "memplan.bounds/1", "parts": {}}
    for part in PARTS:
        s = summarize([r for r in rows if r["part"] == part])
        out["parts"][part] = {"allocated_max_abs_error": _ceil(s["allocated"]["max"]),
                              "device_max_abs_error": _ceil(s["device"]["max"]),
                              "optimistic_verdicts": s["verdicts"]["optimistic"],
                              "wrong_verdicts": s["verdicts"]["count"] - s["verdicts"]["right"]}
    return out


def violations(rows: list[dict[str, Any]], published: dict[str, Any]) -> list[str]:
    """Every record whose error exceeds its part's bound, and every part with more wrong verdicts."""
    out = []
    for row in rows:
        bound = published["parts"][row["part"]]
        for kind in ("allocated", "device"):
            error, limit = row[f"{kind}_error"], bound[f"{kind}_max_abs_error"]
            if error is not None and limit is not None and abs(error) > limit:
                out.append(f"{row['run_id']} ({row['part']}, {row['model']}): {kind} error {error * 100:+.2f}% "
                           f"beyond the published {limit * 100:.1f}%")
    for part in PARTS:
        v = summarize([r for r in rows if r["part"] == part])["verdicts"]
        bound = published["parts"][part]
        if v["optimistic"] > bound["optimistic_verdicts"] or v["count"] - v["right"] > bound["wrong_verdicts"]:
            out.append(f"{part}: {v['count'] - v['right']} wrong verdicts ({v['optimistic']} optimistic), published "
                       f"{bound['wrong_verdicts']} ({bound['optimistic_verdicts']})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-bounds", action="store_true", help=f"write {BOUNDS.relative_to(ROOT)}")
    parser.add_argument("--legacy-predictions", metavar="BATCH",
                        help="print a pre-registered verdict set (h100-verdicts2/3) as prediction lines for `memplan score`")
    args = parser.parse_args()
    if args.legacy_predictions:
        batch = next(b for b in load_history()["batches"] if b["batch"] == args.legacy_predictions)
        print("".join(json.dumps(line) + "\n" for line in legacy_prediction_lines(batch)), end="")
        return
    rows = score_rows()
    if args.write_bounds:
        BOUNDS.write_text("# written by benchmarks/rescore.py --write-bounds; the bounds docs/accuracy.md publishes\n"
                          + yaml.safe_dump(bounds(rows), sort_keys=False))
        print(f"-> {BOUNDS}")
        return
    print(markdown(rows), end="")


if __name__ == "__main__":
    main()
