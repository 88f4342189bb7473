#!/usr/bin/env python3
"""The settle recipe, end to end, as a user with one RTX 3090 would follow it: for a plan the estimate calls
TIGHT, trace the two shorter lengths `memplan estimate` names on the card itself, replay the plan at its own
length from those two traces (`memplan replay A B --text-len N --card rtx-3090`), write the verdict down, then
run the plan capped.

Write the run set (CPU; commit it, then `memplan predict` it, then commit the predictions):

    python benchmarks/settle_batch.py write --batch settle-a --runset benchmarks/stacks/runset-settle-a.yaml
    memplan predict benchmarks/stacks/runset-settle-a.yaml --out reports/probes/predictions/settle-a.jsonl

Run it (GPU):

    python3 benchmarks/settle_batch.py run benchmarks/stacks/runset-settle-a.yaml --out-dir /tmp/settle-a \
        --estimate reports/probes/predictions/settle-a.jsonl --budget 520

``write``: for each family (benchmarks/expandable_batch.py's, under the default allocator), the length on the
64-token grid whose estimate at the RTX 3090 is nearest a target share of the card inside the tight band (0.985
and 1.015 alternating between families; lengths other run sets ran for the model and plan file are skipped), and
the two lengths memplan.planning.advice.settle names for it. Three capped runs per plan, in this order: ``<plan>-a`` and
``<plan>-b`` at the settle lengths (the estimate says both fit clear of the band: that claim is scored too), then
``<plan>`` at its own length.

``run``, one plan at a time: the two settle runs capped, each traced (benchmarks/replay_batch.py's
capped_traced); the replay of the plan's length from those traces through the CLI a user runs (`memplan replay
... --format json --alloc-conf default --no-smallest`), its verdict written to ``settle.json`` with the time it
was decided, both traces' sha256 and the code's revision; only then the plan capped, its record appended to
``records.jsonl``. A settle run that does not fit ends that plan: the recipe failed, and the table says so.
Prints the table last (benchmarks/score_replay.py's, which reads settle.json's per-run ``verdict``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from expandable_batch import CARD, FAMILIES, estimate_at, new_lengths  # noqa: E402  (benchmarks/ is not a package)
from replay_batch import capped_traced, utc_now  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = (0.985, 1.015)
SETTLE_FAMILIES = ("ds-lora-q3", "acc-lora-q3", "t-eager-q15", "t-vl1b-3t", "l-lora-q15", "s1b-ck-t3")


def choose(family, target: float, calibration, *, batch: str):
    """(length, needed / card, Settle) of the tight length nearest ``target`` that settle() answers for."""
    from memplan.planning.advice import settle

    rows = []
    for tokens in new_lengths(family, batch=batch):
        profile, the_plan, result = estimate_at(family, tokens, calibration)
        if result.tight and (result.needed_bytes < result.vram_bytes) == (target < 1):
            rows.append((abs(result.needed_bytes / result.vram_bytes - target), tokens, profile, the_plan, result))
    for _, tokens, profile, the_plan, result in sorted(rows, key=lambda r: (r[0], r[1])):
        answer = settle(profile, the_plan, calibration, result=result)
        if answer is not None:  # a settle length may repeat an earlier run's: it is a trace, not a verdict
            return tokens, result.needed_bytes / result.vram_bytes, answer
    return None


def write(args) -> None:
    from memplan.spec.loading import load_calibration

    if args.runset.exists():
        sys.exit(f"error: {args.runset} exists; a run set is written once, before its predictions")
    calibration = load_calibration()
    families = [f for f in FAMILIES if f[0] in SETTLE_FAMILIES]
    runs, table = [], []
    for i, family in enumerate(families):
        name, model, plan, flags, _ = family
        chosen = choose(family, TARGETS[i % 2], calibration, batch=args.batch)
        if chosen is None:
            table.append(f"| {name} | {TARGETS[i % 2]:.3f} | no tight length settle answers for | | |")
            continue
        tokens, share, answer = chosen
        base = f"{args.batch}-{name}-{tokens}"
        a, b = answer.trace_tokens
        for suffix, length, purpose in (
                ("-a", a, f"settle trace of {base}: the shorter length memplan estimate names (fits clear of the band)"),
                ("-b", b, f"settle trace of {base}: the longer length memplan estimate names (fits clear of the band)"),
                ("", tokens, f"the plan at its own length: the estimate says TIGHT ({share:.3f} of the {CARD}); the "
                             f"replay of {base}-a and -b's traces decides it before this run")):
            run = {"name": base + suffix, "model": model, "flags": {**flags, "text_len": length}, "vram_cap": CARD,
                   "timeout_s": 120, "purpose": purpose}
            if plan:
                run["plan"] = plan
            runs.append(run)
        table.append(f"| {name} | {TARGETS[i % 2]:.3f} | {tokens} | {share:.3f} | {a}, {b} |")
    document = {"schema": "memplan.runset/1", "batch": args.batch, "card": "h100-sxm", "steps": 4,
                "description": ("The settle recipe end to end at the RTX 3090's CUDA-visible 23.70 GiB under the default "
                                "allocator (benchmarks/settle_batch.py): for plans of six stacks (DeepSpeed ZeRO-2 through "
                                "Trainer, accelerate, Trainer + peft eager, InternVL through Trainer, the custom loop, the "
                                "Sa2VA harness) that the estimate calls TIGHT, the two shorter lengths `memplan estimate` "
                                "names are run capped and traced, the plan's own length is replayed from those traces "
                                "(`memplan replay A B --text-len N --card rtx-3090`) and the verdict written down, then the "
                                "plan runs capped. The estimate's predictions, every settle length included, are committed "
                                "before any run. Stated before the runs: if the recipe holds, every settle run fits and "
                                "every replay verdict is right; a miss is reported as one."),
                "runs": runs}
    args.runset.write_text("# Run set for benchmarks/settle_batch.py run and `memplan predict` (schema memplan.runset/1),\n"
                           "# written by benchmarks/settle_batch.py write; plans are relative to this folder.\n"
                           + yaml.safe_dump(document, sort_keys=False, width=200))
    print("| family | target | text length | needed/card | settle lengths |\n|---|---:|---:|---:|---|")
    print("\n".join(table))


def plans(runset) -> list[tuple]:
    """(plan run, settle run a, settle run b) in the run set's order."""
    by_name = {run.name: run for run in runset.runs}
    return [(run, by_name[run.name + "-a"], by_name[run.name + "-b"]) for run in runset.runs
            if run.name + "-a" in by_name and run.name + "-b" in by_name]


def replay_verdict(plan_run, traces: list[Path]) -> dict:
    """`memplan replay A B --text-len N --card CARD` as a user runs it: the default allocator's verdict."""
    argv = [sys.executable, "-m", "memplan.cli.main", "replay", *map(str, traces), "--text-len",
            str(plan_run.flags["text_len"]), "--card", str(plan_run.vram_cap), "--alloc-conf", "default",
            "--no-smallest", "--format", "json"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        return {"verdict": None, "error": (done.stderr or done.stdout).strip()[-500:], "argv": argv[2:]}
    document = json.loads(done.stdout)
    row = next((r for r in document["rows"] if r["setting"] == "default"), None)
    return {"verdict": None if row is None else row["verdict"], "limit_bytes": None if row is None else row["limit_bytes"],
            "replay": document, "argv": argv[2:]}


def run(args) -> None:
    from memplan.planning.protocol import estimator_revision, load_runset
    from score_replay import report, score
    from trace_runset import bundle_traces

    runset = load_runset(args.runset)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget if args.budget else None
    entries: list[dict] = []
    settle_file = args.out_dir / "settle.json"
    for plan_run, run_a, run_b in plans(runset):
        if args.only and plan_run.name not in args.only:
            continue
        if deadline and deadline - time.time() < args.min_plan:
            entries.append({"name": plan_run.name, "verdict": None, "skipped": "budget"})
            continue
        entry: dict = {"name": plan_run.name, "traces": [run_a.name, run_b.name]}
        statuses, traces = [], []
        for settle_run in (run_a, run_b):
            record, trace, _, _ = capped_traced(runset, settle_run, args.runset, args.out_dir, settle_run.timeout_s)
            statuses.append(record["status"])
            traces.append(trace)
            print(f"[{time.strftime('%H:%M:%S')}] {settle_run.name}: {record['status']}", flush=True)
        entry["trace_status"] = statuses
        if statuses != ["ok", "ok"] or not all(t.exists() for t in traces):
            entry.update(verdict=None, failed="a settle run did not fit or left no trace: the recipe failed here")
        else:
            entry.update(replay_verdict(plan_run, traces))
            entry.update(decided_utc=utc_now(), revision=estimator_revision(also=("benchmarks/settle_batch.py",)),
                         trace_sha256=[hashlib.sha256(t.read_bytes()).hexdigest() for t in traces])
        entries.append(entry)
        settle_file.write_text(json.dumps({"batch": runset.batch, "runs": entries}, indent=1))
        print(f"[{time.strftime('%H:%M:%S')}] {plan_run.name}: replay says {entry.get('verdict')}", flush=True)
        if entry.get("verdict") is None:
            continue
        record, *_ = capped_traced(runset, plan_run, args.runset, args.out_dir, plan_run.timeout_s)
        print(f"[{time.strftime('%H:%M:%S')}] {plan_run.name}: capped {record['status']}", flush=True)
    settle_file.write_text(json.dumps({"batch": runset.batch, "runs": entries}, indent=1))
    bundle_traces(args.out_dir)
    if (args.out_dir / "records.jsonl").exists():
        print("\n".join(report(score(settle_file, args.out_dir / "records.jsonl", args.estimate))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    writer = commands.add_parser("write", help="write the run set (CPU)")
    writer.add_argument("--batch", required=True)
    writer.add_argument("--runset", type=Path, required=True, help="run set to write (refused if it exists)")
    runner = commands.add_parser("run", help="run it (GPU)")
    runner.add_argument("runset", type=Path)
    runner.add_argument("--out-dir", type=Path, required=True)
    runner.add_argument("--estimate", type=Path, help="the estimate's committed predictions (memplan predict)")
    runner.add_argument("--budget", type=float, default=None, help="seconds for the whole batch")
    runner.add_argument("--min-plan", type=float, default=150, help="do not start a plan with less budget left")
    runner.add_argument("--only", nargs="*", help="plan runs (their names, without -a/-b) to run")
    args = parser.parse_args()
    write(args) if args.command == "write" else run(args)


if __name__ == "__main__":
    main()
