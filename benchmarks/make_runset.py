#!/usr/bin/env python3
"""Write the run set of a new batch: capped verdict runs spread around a card's CUDA-visible capacity,
plus uncapped runs that measure the batching card's context.

    python benchmarks/make_runset.py > reports/probes/runsets/h200-batch4.yaml
    memplan predict reports/probes/runsets/h200-batch4.yaml --out reports/probes/predictions/h200-batch4.jsonl

Verdict runs: single-GPU Sa2VA-1B / InternVL3-2B plans on axes no earlier batch used, estimated on the
emulated card (--vram-cap CARD); the plans nearest to evenly spaced targets of needed/capacity across
[1 - band, 1) (predicted to fit) and (1, 1 + band] (predicted to run out), the same count on each side.
Deterministic: the same estimator and calibration give the same file.
"""

from __future__ import annotations

import argparse
import itertools

import yaml

from memplan.spec.flags import plan_from_flags
from memplan.estimate.peak import estimate
from memplan.probe.shapes import ProbeBuildError, input_shapes
from memplan.spec.loading import load_calibration, load_profile

MEASURED_TEXTS = {1024, 2048, 2560, 3072, 3328, 3584, 4096, 4352, 4608, 5120, 5376, 5632, 6144, 6656, 7168, 7680, 8192}
AXES = {  # text lengths no earlier batch used (reports/probes/h100-*.jsonl)
    "text_len": tuple(t for t in range(2240, 8000, 64) if t not in MEASURED_TEXTS),
    "tiles": (3, 7, 11),
    "objects": (1, 4),
    "res": (1024,),
}
MIN_GAP = 0.004  # chosen runs lie at least this far apart in needed/capacity, one per (model, engine, text)
UNCAPPED = [  # the batching card's context (no NCCL / with NCCL) and two allocated checks
    {"name": "ctx-1b-pt-2k", "model": "sa2va-1b", "flags": {"engine": "pytorch", "text_len": 2048, "tiles": 4},
     "purpose": "context: plain PyTorch, no NCCL"},
    {"name": "ctx-1b-z2-2k", "model": "sa2va-1b", "flags": {"zero": 2, "text_len": 2048, "tiles": 4},
     "purpose": "context: DeepSpeed on one GPU (NCCL communicator)"},
    {"name": "alloc-0.5b-full-pt", "model": "qwen2.5-0.5b", "plan": "full-llm",
     "flags": {"engine": "pytorch", "text_len": 2048}, "purpose": "allocated: full fine-tuning (the -4.2% H100 run)"},
]


def candidates(card: str) -> list[tuple[float, dict]]:
    calibration = load_calibration(None)
    out = []
    for model in ("sa2va-1b", "sa2va-internvl3-2b"):
        profile = load_profile(model)
        for engine, text, ckpt, tiles, objects, res in itertools.product(
                ("pt", "z2"), AXES["text_len"], (True, False), AXES["tiles"], AXES["objects"], AXES["res"]):
            flags = {**({"zero": 2} if engine == "z2" else {"engine": "pytorch"}), "text_len": text, "ckpt": ckpt,
                     "tiles": tiles, "objects": objects, "res": res}
            plan = plan_from_flags(None, gpus=1, gpu=card, **flags)
            try:
                input_shapes(profile, plan)
            except ProbeBuildError:
                continue
            result = estimate(profile, plan, calibration)
            name = (f"cap-{model.removeprefix('sa2va-')}-{engine}-{text}-t{tiles}-r{res}-o{objects}-"
                    f"{'ck' if ckpt else 'nock'}")
            out.append((result.needed_bytes / result.vram_bytes,
                        {"name": name, "model": model, "flags": flags, "vram_cap": card, "purpose": "verdict"}))
    return out


def _family(run: dict) -> tuple:
    flags = run["flags"]
    return run["model"], "zero" in flags, flags["text_len"]


def pick(pool: list[tuple[float, dict]], *, band: float, per_side: int) -> list[tuple[float, dict]]:
    chosen: list[tuple[float, dict]] = []
    for side in (-1, 1):
        for i in range(per_side):
            target = 1 + side * band * (i + 0.5) / per_side
            taken = {_family(c[1]) for c in chosen}
            eligible = [c for c in pool if (c[0] <= 1 if side < 0 else c[0] > 1) and abs(c[0] - 1) <= band
                        and _family(c[1]) not in taken and all(abs(c[0] - d[0]) >= MIN_GAP for d in chosen)]
            if eligible:
                chosen.append(min(eligible, key=lambda c: abs(c[0] - target)))
    return sorted(chosen, key=lambda c: c[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="h200-batch4")
    parser.add_argument("--card", default="h200", help="the card the batch runs on")
    parser.add_argument("--cap-card", default="rtx-3090", help="the card the verdict runs emulate")
    parser.add_argument("--band", type=float, default=0.05)
    parser.add_argument("--per-side", type=int, default=7)
    args = parser.parse_args()
    chosen = pick(candidates(args.cap_card), band=args.band, per_side=args.per_side)
    fits = [run for ratio, run in chosen if ratio <= 1]
    ooms = [run for ratio, run in chosen if ratio > 1]
    verdict_runs = [run for pair in itertools.zip_longest(fits, ooms) for run in pair if run]  # fit/OOM alternate
    runset = {
        "schema": "memplan.runset/1", "batch": args.batch, "card": args.card, "steps": 3,
        "description": (f"{len(verdict_runs)} verdict runs at {args.cap_card}'s CUDA-visible capacity (needed within "
                        f"+-{args.band:.0%} by the estimate; {len(fits)} predicted to fit, {len(ooms)} to run out), "
                        f"fit and OOM alternating, between {len(UNCAPPED)} uncapped runs measuring {args.card}'s context (one first); "
                        "written by benchmarks/make_runset.py"),
        "runs": [UNCAPPED[0], *verdict_runs, *UNCAPPED[1:]],  # the no-NCCL context first: cheap, never skipped
    }
    print(yaml.safe_dump(runset, sort_keys=False, width=120), end="")
    for ratio, run in chosen:
        print(f"# {run['name']}: needed/capacity {ratio:.3f}")


if __name__ == "__main__":
    main()
