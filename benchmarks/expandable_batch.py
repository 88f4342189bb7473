#!/usr/bin/env python3
"""Write a run set that tests the expandable-segments tight band: capped plans the default allocator's band
calls TIGHT and the expandable-segments band calls clear.

    python benchmarks/expandable_batch.py --batch xs-f --runset benchmarks/stacks/runset-xs-f.yaml
    memplan predict benchmarks/stacks/runset-xs-f.yaml --out reports/probes/predictions/xs-f.jsonl

Calibration.tight_bands["expandable_segments"] (1.0%) is the widest miss of the 17 pre-registered verdicts
predicted and run under expandable segments (benchmarks/rescore.py --tight-band); the default allocator's is
5.5%, and until 2026-12-08 it applied to every plan. A plan under expandable segments whose needed bytes lie
between the two bands is where the narrower band changes what memplan says: TIGHT before, a verdict now. For each family below (one plan of each stack, the same
families the replay batches used), the 64-token grid of its window is estimated under expandable segments at the
card, and the batch runs, per family, the length nearest a target share of the card on the fitting side and
the one nearest a target on the running-out side, both clear of the 1.0% band and inside the 5.5% one. The
targets alternate between families (0.965 / 0.980 below, 1.020 / 1.035 above), so the batch covers the space
between the bands on both sides. Lengths another run set of benchmarks/stacks/ ran for the same model and
plan are skipped: every plan is new.

Deterministic: the same estimator, calibration and run sets give the same file. Refuses an existing --runset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STACKS = REPO / "benchmarks" / "stacks"
STEP = 64
CARD = "rtx-3090"
ALLOC_CONF = "expandable_segments:True"
SA2VA = {"engine": "pytorch", "objects": 1, "res": 512}
# name, model, plan file (benchmarks/stacks/), flags less text_len, window of text lengths to scan
FAMILIES = [
    ("ds-lora-q3", "qwen2.5-3b", "plans/trainer-lora-ds.yaml", {}, (6016, 9984)),
    ("ds-full-q05", "qwen2.5-0.5b", "plans/trainer-full-ds.yaml", {}, (7040, 14080)),
    ("acc-lora-q3", "qwen2.5-3b", "plans/accel-lora.yaml", {}, (5120, 8960)),
    ("t-eager-q15", "qwen2.5-1.5b", "plans/trainer-lora-eager.yaml", {}, (6016, 10112)),
    ("t-fp32w-q15", "qwen2.5-1.5b", "plans/trainer-lora-fp32w.yaml", {}, (6016, 11008)),
    ("t-vl1b-3t", "internvl2.5-1b", "plans/trainer-vl-lora.yaml", {"tiles": 3}, (8960, 14080)),
    ("l-vl1b-7t", "internvl2.5-1b", "plans/loop-vl-lora.yaml", {"tiles": 7}, (7040, 12032)),
    ("l-lora-q15", "qwen2.5-1.5b", "plans/loop-lora.yaml", {}, (7040, 12032)),
    ("s1b-ck-t3", "sa2va-1b", None, {**SA2VA, "ckpt": True, "tiles": 3}, (6016, 10112)),
    ("s1b-nock-t2", "sa2va-1b", None, {**SA2VA, "ckpt": False, "tiles": 2}, (3008, 6016)),
]
FIT_TARGETS = (0.965, 0.980)
OOM_TARGETS = (1.035, 1.020)


def new_lengths(family, *, batch: str) -> list[int]:
    """The family's window on the 64-token grid, less the text lengths the run sets of benchmarks/stacks/ (but
    ``batch``'s own) already ran for its model and plan file."""
    _, model, plan, _, (low, high) = family
    ran = set()
    for path in sorted(STACKS.glob("runset-*.yaml")):
        runset = yaml.safe_load(path.read_text())
        if runset.get("batch") == batch:
            continue
        ran |= {run["flags"]["text_len"] for run in runset.get("runs", [])
                if run.get("model") == model and run.get("plan") == plan and "text_len" in run.get("flags", {})}
    return [tokens for tokens in range(low, high + 1, STEP) if tokens not in ran]


def estimate_at(family, tokens: int, calibration, *, alloc_conf: str | None = None):
    """(profile, plan, Estimate) of the family's plan at ``tokens`` on the card, as `memplan predict` makes it."""
    from memplan.cli.names import resolve_profile
    from memplan.cli.protocol_cmd import planned_plan
    from memplan.estimate.peak import estimate
    from memplan.planning.protocol import PlannedRun, RunSet

    name, model, plan, flags, _ = family
    run = PlannedRun(name=f"{name}-{tokens}", model=model, plan=plan, flags={**flags, "text_len": tokens},
                     vram_cap=CARD, alloc_conf=alloc_conf)
    runset = RunSet(schema="memplan.runset/1", batch="scan", card="h100-sxm", runs=[run])
    the_plan = planned_plan(runset, run, STACKS / "runset.yaml")
    profile = resolve_profile(model, the_plan)
    return profile, the_plan, estimate(profile, the_plan, calibration)


def shares(family, calibration, *, batch: str) -> list[tuple[int, float, float]]:
    """(text length, needed / capacity under expandable segments, the same under the default allocator) for
    every new length of the family's window."""
    out = []
    for tokens in new_lengths(family, batch=batch):
        results = [estimate_at(family, tokens, calibration, alloc_conf=conf)[2] for conf in (ALLOC_CONF, None)]
        out.append((tokens, *(r.needed_bytes / r.vram_bytes for r in results)))
    return out


def pick(rows: list[tuple[int, float, float]], target: float, *, narrow: float, wide: float):
    """The row nearest ``target`` whose expandable share is clear of ``narrow`` and inside ``wide``, on the
    target's side of the card; None when the window has none."""
    side = [r for r in rows if narrow < abs(r[1] - 1) <= wide and (r[1] < 1) == (target < 1)]
    return min(side, key=lambda r: (abs(r[1] - target), r[0]), default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", required=True)
    parser.add_argument("--runset", type=Path, required=True, help="run set to write (refused if it exists)")
    args = parser.parse_args()
    if args.runset.exists():
        sys.exit(f"error: {args.runset} exists; a run set is written once, before its predictions")
    sys.path.insert(0, str(REPO))
    from memplan.spec.loading import load_calibration

    calibration = load_calibration()
    narrow, wide = calibration.band_for("expandable_segments"), calibration.tight_band
    runs, table = [], []
    for i, family in enumerate(FAMILIES):
        name, model, plan, flags, _ = family
        rows = shares(family, calibration, batch=args.batch)
        for target in (FIT_TARGETS[i % 2], OOM_TARGETS[i % 2]):
            row = pick(rows, target, narrow=narrow, wide=wide)
            if row is None:
                table.append((name, target, None))
                continue
            tokens, xs, default = row
            run = {"name": f"{args.batch}-{name}-{tokens}", "model": model, "flags": {**flags, "text_len": tokens},
                   "vram_cap": CARD, "alloc_conf": ALLOC_CONF, "timeout_s": 120,
                   "purpose": (f"verdict under expandable segments: the estimate needs {xs:.3f} of the {CARD} under them, "
                               f"clear of their {narrow:.1%} band and inside the {wide:.1%} one every allocator had "
                               f"before; {default:.3f} under the default allocator")}
            if plan:
                run["plan"] = plan
            runs.append(run)
            table.append((name, target, row))
    defaults = [row[2] for _, _, row in table if row is not None]
    low, high = min(defaults), max(defaults)
    document = {"schema": "memplan.runset/1", "batch": args.batch, "card": "h100-sxm", "steps": 4,
                "description": ("Capped verdicts under PyTorch's expandable segments at the RTX 3090's CUDA-visible "
                                "23.70 GiB, over every stack (DeepSpeed ZeRO-2 through Trainer, LoRA and full; accelerate; "
                                "Trainer + peft with eager attention, fp32 weights and InternVL; the custom loop, text "
                                "and InternVL; the Sa2VA harness with and without checkpointing): plans whose estimate "
                                f"under expandable segments lies between their {narrow:.1%} tight band and the default "
                                f"allocator's {wide:.1%}: the estimate now calls them, where one band for every allocator "
                                "called them TIGHT (benchmarks/expandable_batch.py). The same lengths under the default "
                                f"allocator are estimated at {low:.2f}-{high:.2f} of the card (not run). The estimate's "
                                "predictions are committed before any "
                                "run. Stated before the runs: if the expandable-segments band holds, every verdict is "
                                "right; a miss is reported as one and widens the band."),
                "runs": runs}
    args.runset.write_text("# Run set for benchmarks/run_runset.py and `memplan predict` (schema memplan.runset/1),\n"
                           "# written by benchmarks/expandable_batch.py; plans are relative to this folder.\n"
                           + yaml.safe_dump(document, sort_keys=False, width=200))
    print("| family | target | text length | needed/card, expandable | default allocator |")
    print("|---|---:|---:|---:|---:|")
    for name, target, row in table:
        cells = "no length in the window | | " if row is None else f"{row[0]} | {row[1]:.3f} | {row[2]:.3f}"
        print(f"| {name} | {target:.3f} | {cells} |")


if __name__ == "__main__":
    main()
