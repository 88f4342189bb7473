#!/usr/bin/env python3
"""Re-score every probe record with honest labels: the tables of docs/accuracy.md, and the
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
    python benchmarks/rescore.py --batches            # per batch and per stack: pre-registered and current errors
    python benchmarks/rescore.py --legacy-predictions h200-fsdp-fake-world > /tmp/fsdp.jsonl   # fsdp-predictions.json
                                                      # as prediction lines (matched by command), for `memplan score`

Batches with ``parts: by-stack`` (the H200 batches of 2026-12-02) put each record in the part of its
stack (stack_part): sa2va-harness, hf-trainer, custom-loop, internvl (InternVL through Trainer or the
custom loop), hf-trainer-deepspeed, fsdp2-fake-world. The shipped calibration was fitted on H100
records only, so their side (still printed) is not in-sample for anything.
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
from memplan.spec.allocator import EXPANDABLE, allocator_of, unmodelled_options

ROOT = Path(__file__).resolve().parents[1]
HISTORY = ROOT / "reports" / "probes" / "history.yaml"
BOUNDS = ROOT / "reports" / "probes" / "bounds.yaml"
PARTS = ("formulas-seen", "calibration", "held-out", "sa2va-harness", "hf-trainer", "custom-loop", "accelerate", "internvl",
         "hf-trainer-deepspeed", "fsdp2-fake-world")
PART_LABELS = {
    "formulas-seen": "in-sample: the allocated formulas were fixed on these",
    "calibration": "in-sample for the calibration (fitted on this side); allocated out of sample",
    "held-out": "held out from the formulas and from the calibration",
    "sa2va-harness": "H200 and (2026-12-06, -07) H100, the Sa2VA harness (h200-batch4 to -9, h100-batch10, -11; h200-steptime-b, -c, -c2, h100-steptime-d to -k, -n, h100-profile-a, h100-repeat-a, -layout-a, -layout-b, their memory not pre-registered; h100-replay-b, -d); h200-batch8 and -9 in-sample for the expandable-segments term (found on them), h100-batch10 held out for it",
    "hf-trainer": "H200 (H100 for stacks-e, -f, layout-a, replay-b, -d, -e, eager-a), transformers Trainer + peft, text-only LLMs",
    "custom-loop": "H200 (H100 for stacks-e, -f, repeat-a, layout-a, -b, replay-b, -d, eager-a), a custom training loop, text-only LLMs",
    "accelerate": "H200 (H100 for replay-d), an accelerate loop (Accelerator(mixed_precision=bf16)) + peft, text-only LLMs",
    "internvl": "H200 (H100 for stacks-e, -f, repeat-a, replay-b, -d, -e, eager-a), InternVL2.5 through Trainer or the custom loop; stacks-a/-b in-sample since 98fcda0 (checkpoint scope found on these), stacks-c, -d, -e and -f held out",
    "hf-trainer-deepspeed": "H200 (H100 for stacks-e, -f, replay-d, -e), DeepSpeed ZeRO-2/3 through Trainer; stacks-b in-sample since 98fcda0 (bucket timing) and docs/stacks.md 9-11 (one-rank ZeRO-3 gather, ZeRO-3 gradient partitions, tied head; found on these), stacks-c held out but for ds-full-z2-q15-1k (docs/stacks.md 12 found on it), stacks-d, -e and -f held out",
    "fsdp2-fake-world": "H200, FSDP2 (and one DeepSpeed ZeRO-3) rank 0 of a fake world (Qwen2.5-1.5B, Sa2VA-1B); the first batch in-sample since the three FSDP2 fixes, fake-world-b in-sample for dim-0 padding and ZeRO-3 (docs/stacks.md 13-14), fake-world-c and -d held out; Qwen2.5-0.5B/3B too",
}


def load_history() -> dict[str, Any]:
    return yaml.safe_load(HISTORY.read_text())


def stack_part(record: dict[str, Any]) -> str:
    """The part of a record of a by-stack batch: its training stack, InternVL models on their own."""
    plan = record.get("plan") or {}
    engine = (plan.get("engine") or {}).get("kind")
    kind = (plan.get("stack") or {}).get("kind", "sa2va")
    if record.get("fake_world"):
        return "fsdp2-fake-world"
    if kind == "sa2va":
        return "sa2va-harness"
    if engine == "deepspeed":
        return f"{kind}-deepspeed"
    if (record.get("profile") or {}).get("vision"):
        return "internvl"
    return kind


def part_of(run_id: str, batch: dict[str, Any], record: dict[str, Any] | None = None) -> str:
    if batch.get("parts") == "by-stack":
        return stack_part(record or {})
    return "formulas-seen" if batch["formulas"] == "seen" else side_of(run_id)


def stack_label(record: dict[str, Any]) -> str:
    """hf-trainer/deepspeed-z3, custom-loop/pytorch, sa2va/fsdp2 (as memplan score groups them)."""
    plan = record.get("plan") or {}
    engine = plan.get("engine") or {}
    kind = (plan.get("stack") or {}).get("kind", "sa2va")
    label = f"deepspeed-z{engine.get('zero_stage')}" if engine.get("kind") == "deepspeed" else engine.get("kind", "pytorch")
    return f"{kind}/{label}" + (" (fake world)" if record.get("fake_world") else "")


def _plan_for_record(record: dict[str, Any], plan):
    """A capped record that emulated a card (vram_cap_card) is estimated on that card, as it was predicted."""
    card = record.get("vram_cap_card")
    if not card:
        return plan
    hardware = plan.hardware.model_copy(update={"gpu": card})
    return plan.model_copy(update={"hardware": hardware})


def estimated_records(calibration=None):
    """(batch, record, measured, estimate) for every scored record of every batch, estimated with today's
    model (a record that emulated a card estimated on that card)."""
    calibration = calibration or load_calibration(None)
    for batch in load_history()["batches"]:
        for path in batch["files"]:
            for record in read_records(ROOT / path):
                if not scored(record["model"], record["status"]):
                    continue
                m = measured_from_record(record, path)
                yield batch, record, m, estimate(m.profile, _plan_for_record(record, m.plan), calibration)


def score_rows(calibration=None) -> list[dict[str, Any]]:
    """One row per scored record of every batch: errors of today's estimate, verdict under a cap."""
    rows = []
    for batch, record, m, e in estimated_records(calibration):
        ok = m.status == "ok"
        cap = m.vram_cap_bytes
        rows.append({
            "run_id": m.run_id, "batch": batch["batch"], "part": part_of(m.run_id, batch, record),
            "side": side_of(m.run_id), "model": m.profile.name, "status": m.status, "capped": bool(cap),
            "command": record.get("command", ""), "run_key": record.get("run_key"),
            "stack": stack_label(record),
            "allocated_error": (e.peak_allocated_bytes - m.allocated) / m.allocated if ok and m.allocated else None,
            "device_error": (e.device_bytes - m.device) / m.device if ok and not cap and m.device else None,
            "verdict": ("oom" if e.needed_bytes > cap else "fits", "oom" if m.status == "oom" else "fits")
            if cap and not m.alloc_options else None,  # no verdict for allocator options not modelled
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


def fsdp_prediction_lines(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """reports/probes/fsdp-predictions.json (benchmarks/fsdp_predictions.py, written before the runs) as
    memplan.prediction/1 lines: each run matched to its record by the probe command benchmarks/fsdp_batch.py
    built from the same run (model and fake-world flags, benchmarks/fsdp_runs.py cli_flags). Uncapped: no verdict.
    A file that names its held-out runs (the ones not yet run when it was written) plans those only."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fsdp_runs import RUNS, probe_head, records_of  # noqa: PLC0415

    document = json.loads((ROOT / batch["predictions"]).read_text())
    records = [r for path in batch["files"] for r in read_records(ROOT / path)]
    specs = {run["name"]: run for run in RUNS}
    out = []
    planned = set(document.get("held_out") or [run["name"] for run in document["runs"]])  # the rest: earlier runs
    for run in (run for run in document["runs"] if run["name"] in planned):
        match = records_of(specs[run["name"]], records)  # exact flags: n8 is not offload-n8
        if len(match) > 1:
            raise ValueError(f"{run['name']}: {len(match)} records match {probe_head(specs[run['name']])!r}")
        out.append({"schema": "memplan.prediction/1", "batch": batch["batch"], "run_key": f"{document['set']}/{run['name']}",
                    "run_id": match[0]["run_id"] if match else None, "name": run["name"], "model": run["model"],
                    "vram_cap": None, "capacity_bytes": None,
                    "predicted": {"peak_allocated_bytes": run["peak_allocated_bytes"], "device_bytes": run["device_bytes"],
                                  "needed_bytes": run["needed_bytes"], "verdict": run["verdict"]},
                    "estimator_revision": "see reports/probes/history.yaml", "source": batch["predictions"]})
    return out


def prediction_lines(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch's pre-registered predictions as memplan.prediction/1 lines, whatever file format it has."""
    fmt = batch.get("predictions_format", "verdicts-json")
    if fmt == "jsonl":
        from memplan.planning.protocol import read_predictions

        return read_predictions(ROOT / batch["predictions"])
    if fmt == "fsdp-json":
        return fsdp_prediction_lines(batch)
    return legacy_prediction_lines(batch)


def pre_registered(batch: dict[str, Any], *, lines: list[dict[str, Any]] | None = None):
    """The batch scored against its committed predictions (memplan.planning.scoring): the estimate as
    predicted before the runs, not today's. Each ScoredRun comes with its record (or None). ``lines``: the
    batch's prediction_lines, where the caller has read them already."""
    from memplan.planning.scoring import score

    records = [r for path in batch["files"] for r in read_records(ROOT / path)]
    lines = prediction_lines(batch) if lines is None else lines
    runs = score(lines, records)
    for run, line in zip(runs, lines):  # the device view is not part of ScoredRun: carried beside it
        object.__setattr__(run, "predicted_device", (line.get("predicted") or {}).get("device_bytes"))
    by_key = {r["run_key"]: r for r in records if r.get("run_key")}
    by_id = {str(r.get("run_id")): r for r in records}
    return [(run, by_key.get(line["run_key"]) or by_id.get(str(line.get("run_id"))))
            for run, line in zip(runs, lines)]


def _group_cells(runs) -> dict[str, str]:
    errors = [abs(r.error) for r in runs if r.error is not None]
    verdicts = [r for r in runs if r.verdict_right is not None]
    optimistic = sum(r.predicted_verdict == "fits" and r.measured_verdict == "oom" for r in verdicts)
    pessimistic = sum(r.predicted_verdict == "oom" and r.measured_verdict == "fits" for r in verdicts)
    alloc = f"{_pct(statistics.median(errors))} / {_pct(max(errors))} ({len(errors)})" if errors else "n/a"
    verdict = (f"{sum(bool(r.verdict_right) for r in verdicts)}/{len(verdicts)} ({optimistic} optimistic, "
               f"{pessimistic} pessimistic)") if verdicts else ""
    return {"alloc": alloc, "verdicts": verdict}


def _device_cell(scored_runs) -> str:
    """Pre-registered device view (nvidia-smi) error of the uncapped runs that trained: predicted device_bytes
    against the record's peak_device_bytes."""
    values = []
    for run, record in scored_runs:
        predicted = None
        if record is None or record.get("status") != "ok" or record.get("vram_cap_bytes") or run.capped:
            continue
        predicted = run.predicted_device
        measured = (record.get("summary") or {}).get("peak_device_bytes")
        if predicted and measured:
            values.append(abs(predicted - measured) / measured)
    return f"{_pct(statistics.median(values))} / {_pct(max(values))} ({len(values)})" if values else "n/a"


def _current_cell(rows: list[dict[str, Any]]) -> str:
    values = [abs(r["allocated_error"]) for r in rows if r["allocated_error"] is not None]
    return f"{_pct(statistics.median(values))} / {_pct(max(values))} ({len(values)})" if values else "n/a"


def batches_markdown(rows: list[dict[str, Any]], miss: float = 0.05) -> str:
    """Per batch and per part (stack): pre-registered errors (against the committed predictions) beside
    the current estimator's (re-estimated now from each record's plan), and every miss named."""
    history = load_history()
    lines = ["| batch | runs planned / recorded / scored | pre-registered allocated median / max (runs) | "
             "verdicts as predicted | current estimator allocated median / max (runs) | pre-registered device "
             "median / max (uncapped runs) | plan mismatches |", "|---|---|---|---|---|---|---|"]
    per_part: dict[str, list] = {}
    members_with_records: dict[str, list] = {}
    misses = []
    current_by_id = {r["run_id"]: r for r in rows}
    for batch in history["batches"]:
        if not batch.get("predictions"):
            continue
        scored_runs = pre_registered(batch)
        runs = [run for run, _ in scored_runs]
        cells = _group_cells(runs)
        recorded = sum(r.status is not None for r in runs)
        n_scored = sum(r.status in ("ok", "oom") for r in runs)
        current = [r for r in rows if r["batch"] == batch["batch"]]
        mismatches = sum(r.plan_matches is False for r in runs)
        lines.append(f"| {batch['batch']} | {len(runs)} / {recorded} / {n_scored} | {cells['alloc']} | {cells['verdicts']} | "
                     f"{_current_cell(current)} | {_device_cell(scored_runs)} | {mismatches} |")
        for run, record in scored_runs:
            if record is None or not scored(record.get("model", ""), record.get("status", "")):
                continue
            part = part_of(str(record.get("run_id")), batch, record)
            per_part.setdefault(part, []).append((run, current_by_id.get(str(record.get("run_id")))))
            members_with_records.setdefault(part, []).append((run, record))
            wrong = run.verdict_right is False
            if wrong or (run.error is not None and abs(run.error) > miss):
                misses.append((batch["batch"], part, run, current_by_id.get(str(record.get("run_id")))))
    lines += ["", "| part | label | runs | pre-registered allocated median / max (runs) | verdicts as predicted | "
              "current estimator allocated median / max (runs) | pre-registered device median / max (uncapped runs) |",
              "|---|---|---:|---|---|---|---|"]
    for part in PARTS:
        if part not in per_part:
            continue
        members = per_part[part]
        cells = _group_cells([run for run, _ in members])
        lines.append(f"| {part} | {PART_LABELS[part]} | {len(members)} | {cells['alloc']} | {cells['verdicts']} | "
                     f"{_current_cell([c for _, c in members if c])} | {_device_cell(members_with_records[part])} |")
    lines += ["", f"Misses (pre-registered |allocated error| > {miss * 100:.0f}% or a wrong verdict):", "",
              "| batch | part | run | model | pre-registered allocated GiB | measured GiB | pre-registered error | "
              "current error | verdict predicted / ran (needed/cap) | current verdict |", "|---|---|---|---|---:|---:|---:|---:|---|---|"]
    for batch, part, run, current in misses:
        verdict = "" if run.predicted_verdict is None else (
            f"{run.predicted_verdict} / {run.measured_verdict} ({run.needed_over_capacity:.3f})")
        cur = _pct(current["allocated_error"]) if current and current["allocated_error"] is not None else "n/a"
        err = "n/a" if run.error is None else f"{run.error * 100:+.1f}%"
        cur = cur if cur == "n/a" else f"{current['allocated_error'] * 100:+.1f}%"
        gib = lambda value: "" if value is None else f"{value / 2**30:.2f}"  # noqa: E731
        lines.append(f"| {batch} | {part} | {run.name} | {run.model} | {gib(run.predicted_allocated)} | "
                     f"{gib(run.measured_allocated)} | {err} | {cur} | {verdict} | "
                     f"{current['verdict'][0] if current and current['verdict'] else ''} |")
    return "\n".join(lines) + "\n"


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
    labels = PART_LABELS
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
    frozen = summarize([r for r in rows if r["part"] in ("calibration", "held-out")])
    lines.append(f"All H100 records after the formulas were frozen: allocated {_alloc_cell(frozen)}.")
    for batch in history["batches"]:
        if batch.get("predictions") and batch.get("predictions_format", "verdicts-json") == "verdicts-json":
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
        out["parts"][part] = {"records": s["records"], "allocated_max_abs_error": _ceil(s["allocated"]["max"]),
                              "device_max_abs_error": _ceil(s["device"]["max"]),
                              "optimistic_verdicts": s["verdicts"]["optimistic"],
                              "wrong_verdicts": s["verdicts"]["count"] - s["verdicts"]["right"]}
    return out


def violations(rows: list[dict[str, Any]], published: dict[str, Any]) -> list[str]:
    """Every record whose error exceeds its part's bound, and every part with more wrong verdicts."""
    out = []
    for row in rows:
        bound = published["parts"].get(row["part"])
        if bound is None:
            out.append(f"{row['run_id']} ({row['batch']}): part {row['part']!r} has no published bound")
            continue
        for kind in ("allocated", "device"):
            error, limit = row[f"{kind}_error"], bound[f"{kind}_max_abs_error"]
            if error is not None and limit is not None and abs(error) > limit:
                out.append(f"{row['run_id']} ({row['part']}, {row['model']}): {kind} error {error * 100:+.2f}% "
                           f"beyond the published {limit * 100:.1f}%")
    for part in PARTS:
        s = summarize([r for r in rows if r["part"] == part])
        v = s["verdicts"]
        bound = published["parts"].get(part)
        if bound is None:
            continue
        if "records" in bound and s["records"] != bound["records"]:
            out.append(f"{part}: {s['records']} scored records, published {bound['records']} (every record is "
                       "listed: none dropped, none added without publishing its part's bound)")
        if v["optimistic"] > bound["optimistic_verdicts"] or v["count"] - v["right"] > bound["wrong_verdicts"]:
            out.append(f"{part}: {v['count'] - v['right']} wrong verdicts ({v['optimistic']} optimistic), published "
                       f"{bound['wrong_verdicts']} ({bound['optimistic_verdicts']})")
    return out


def _allocators(line: dict[str, Any], record: dict[str, Any] | None) -> tuple[str, str | None]:
    """(the allocator the prediction modelled: its plan's stack.allocator, the allocator the run used: its
    environment's PYTORCH_CUDA_ALLOC_CONF, "unmodelled" with an option the estimate does not model such as
    max_split_size_mb; None without a record)."""
    predicted = ((line.get("plan") or {}).get("stack") or {}).get("allocator") or "default"
    if record is None:
        return predicted, None
    conf = (record.get("environment") or {}).get("alloc_conf")
    return predicted, "unmodelled" if unmodelled_options(conf) else allocator_of(conf)


def pre_registered_verdicts(allocator: str | None = None) -> list[tuple[str, Any]]:
    """Every pre-registered capped verdict that was scored: (batch, ScoredRun), as predicted. With
    ``allocator``, only the runs predicted and made under it (h200-batch8 ran under expandable segments but
    was predicted for the default allocator: it counts for neither)."""
    out = []
    for batch in load_history()["batches"]:
        if not batch.get("predictions"):
            continue
        lines = prediction_lines(batch)
        for (run, record), line in zip(pre_registered(batch, lines=lines), lines):
            if run.verdict_right is None or run.needed_over_capacity is None:
                continue
            predicted, ran = _allocators(line, record)
            if allocator is None or predicted == ran == allocator:
                out.append((batch["batch"], run))
    return out


def verdict_misses(allocator: str | None = None) -> list[tuple[str, Any]]:
    """Every pre-registered capped verdict that went the other way (pre_registered_verdicts' filter)."""
    return [(batch, run) for batch, run in pre_registered_verdicts(allocator) if run.verdict_right is False]


def tight_band(allocator: str = "default", step: float = 0.005) -> float:
    """Calibration.tight_band (``allocator`` default) or its tight_bands entry: the widest pre-registered verdict
    miss under that allocator, |needed / capacity - 1| as predicted before the run, rounded up to ``step``.
    In-sample for the band by construction: it is the spread the verdicts have shown, not a test of it (the
    next pre-registered batch is)."""
    widest = max((abs(run.needed_over_capacity - 1) for _, run in verdict_misses(allocator)), default=0.0)
    return math.ceil(round(widest / step, 6)) * step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-bounds", action="store_true", help=f"write {BOUNDS.relative_to(ROOT)}")
    parser.add_argument("--legacy-predictions", metavar="BATCH",
                        help="print a pre-registered set (h100-verdicts2/3, h200-fsdp-fake-world) as prediction lines "
                             "for `memplan score`")
    parser.add_argument("--batches", action="store_true",
                        help="per batch and per stack: pre-registered errors (the predictions files) and the current "
                             "estimator's (re-estimated now), and the misses")
    parser.add_argument("--tight-band", action="store_true",
                        help="print the tight band (Calibration.tight_band) from the pre-registered verdict misses")
    args = parser.parse_args()
    if args.tight_band:
        for allocator in ("default", EXPANDABLE):
            scored = pre_registered_verdicts(allocator)
            misses = [(batch, run) for batch, run in scored if run.verdict_right is False]
            print(f"{allocator}: {len(scored)} pre-registered verdicts predicted and run under it, {len(misses)} wrong")
            for batch, run in misses:
                print(f"  {batch:24} {run.name:45} {run.predicted_verdict} / {run.measured_verdict}  "
                      f"needed/capacity {run.needed_over_capacity:.3f}")
        print(f"tight_band: {tight_band()}")
        print(f"tight_bands: {{{EXPANDABLE}: {tight_band(EXPANDABLE)}}}")
        return
    if args.legacy_predictions:
        batch = next(b for b in load_history()["batches"] if b["batch"] == args.legacy_predictions)
        print("".join(json.dumps(line) + "\n" for line in prediction_lines(batch)), end="")
        return
    rows = score_rows()
    if args.batches:
        print(batches_markdown(rows), end="")
        return
    if args.write_bounds:
        BOUNDS.write_text("# written by benchmarks/rescore.py --write-bounds; the bounds docs/accuracy.md publishes\n"
                          + yaml.safe_dump(bounds(rows), sort_keys=False))
        print(f"-> {BOUNDS}")
        return
    print(markdown(rows), end="")


if __name__ == "__main__":
    main()
