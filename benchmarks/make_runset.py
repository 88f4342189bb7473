#!/usr/bin/env python3
"""Write the run set of a new batch: capped verdict runs spread around a card's CUDA-visible capacity,
plus uncapped runs that measure the batching card's context.

    python benchmarks/make_runset.py > reports/probes/runsets/h200-batch4.yaml
    memplan predict reports/probes/runsets/h200-batch4.yaml --out reports/probes/predictions/h200-batch4.jsonl
    python benchmarks/make_runset.py --batch h200-batch5 --per-side 6 --res 768 1024 --no-uncapped \
        --repeat reports/probes/runsets/h200-batch4.yaml:cap-1b-z2-6080-t11-r1024-o1-ck > reports/probes/runsets/h200-batch5.yaml

Verdict runs: single-GPU Sa2VA-1B / InternVL3-2B plans on axes no earlier batch used, estimated on the
emulated card (--vram-cap CARD); the plans nearest to evenly spaced targets of needed/capacity across
[1 - band, 1) (predicted to fit) and (1, 1 + band] (predicted to run out), the same count on each side.
Text lengths of earlier run sets (reports/probes/runsets/*.yaml) are left out, so every plan is new;
--repeat RUNSET:NAME adds an earlier run again (a new run of the same plan, predicted anew).
Deterministic: the same estimator, calibration and run sets give the same file.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

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
RUNSETS = Path(__file__).resolve().parent.parent / "reports" / "probes" / "runsets"
MIN_GAP = 0.004  # chosen runs lie at least this far apart in needed/capacity, one per (model, engine, text)
UNCAPPED = [  # the batching card's context (no NCCL / with NCCL) and two allocated checks
    {"name": "ctx-1b-pt-2k", "model": "sa2va-1b", "flags": {"engine": "pytorch", "text_len": 2048, "tiles": 4},
     "purpose": "context: plain PyTorch, no NCCL"},
    {"name": "ctx-1b-z2-2k", "model": "sa2va-1b", "flags": {"zero": 2, "text_len": 2048, "tiles": 4},
     "purpose": "context: DeepSpeed on one GPU (NCCL communicator)"},
    {"name": "alloc-0.5b-full-pt", "model": "qwen2.5-0.5b", "plan": "full-llm",
     "flags": {"engine": "pytorch", "text_len": 2048}, "purpose": "allocated: full fine-tuning (the -4.2% H100 run)"},
]


def earlier_texts(*, exclude_batch: str) -> set[int]:
    """Text lengths of the run sets already written (reports/probes/runsets/*.yaml), but this batch's own."""
    texts = set()
    for path in sorted(RUNSETS.glob("*.yaml")):
        runset = yaml.safe_load(path.read_text())
        if runset.get("batch") != exclude_batch:
            texts |= {run["flags"]["text_len"] for run in runset["runs"] if "text_len" in run.get("flags", {})}
    return texts


def repeated(spec: str) -> dict:
    """RUNSET:NAME: that run of an earlier run set, again."""
    path, _, name = spec.rpartition(":")
    runs = [run for run in yaml.safe_load(Path(path).read_text())["runs"] if run["name"] == name]
    if not runs:
        raise SystemExit(f"--repeat: no run {name!r} in {path}")
    return {**runs[0], "purpose": f"{runs[0].get('purpose', 'verdict')} (repeat of {Path(path).stem}/{name})"}


def candidates(card: str, *, res: tuple[int, ...], skip_texts: set[int]) -> list[tuple[float, dict]]:
    calibration = load_calibration(None)
    out = []
    texts = tuple(t for t in AXES["text_len"] if t not in skip_texts)
    for model in ("sa2va-1b", "sa2va-internvl3-2b"):
        profile = load_profile(model)
        for engine, text, ckpt, tiles, objects, sam in itertools.product(
                ("pt", "z2"), texts, (True, False), AXES["tiles"], AXES["objects"], res):
            flags = {**({"zero": 2} if engine == "z2" else {"engine": "pytorch"}), "text_len": text, "ckpt": ckpt,
                     "tiles": tiles, "objects": objects, "res": sam}
            plan = plan_from_flags(None, gpus=1, gpu=card, **flags)
            try:
                input_shapes(profile, plan)
            except ProbeBuildError:
                continue
            result = estimate(profile, plan, calibration)
            name = (f"cap-{model.removeprefix('sa2va-')}-{engine}-{text}-t{tiles}-r{sam}-o{objects}-"
                    f"{'ck' if ckpt else 'nock'}")
            out.append((result.needed_bytes / result.vram_bytes,
                        {"name": name, "model": model, "flags": flags, "vram_cap": card, "purpose": "verdict"}))
    return out


def _family(run: dict) -> tuple:
    flags = run["flags"]
    return run["model"], "zero" in flags, flags["text_len"]


def pick(pool: list[tuple[float, dict]], *, band: float, per_side: int, clear: float = 0.0) -> list[tuple[float, dict]]:
    """Per side, the plans nearest to evenly spaced targets of needed/capacity in (clear, band] from 1:
    clear 0 spreads them up to the card, clear = the tight band puts them all outside it."""
    chosen: list[tuple[float, dict]] = []
    for side in (-1, 1):
        for i in range(per_side):
            target = 1 + side * (clear + (band - clear) * (i + 0.5) / per_side)
            taken = {_family(c[1]) for c in chosen}
            eligible = [c for c in pool if (c[0] <= 1 if side < 0 else c[0] > 1) and clear < abs(c[0] - 1) <= band
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
    parser.add_argument("--clear", type=float, default=0.0,
                        help="only plans farther than this from the card (e.g. the calibration's tight_band)")
    parser.add_argument("--res", type=int, nargs="+", default=list(AXES["res"]), help="SAM2 resolutions to draw from")
    parser.add_argument("--no-uncapped", action="store_true", help="verdict runs only (the context runs are measured)")
    parser.add_argument("--repeat", action="append", default=[], metavar="RUNSET:NAME", help="add an earlier run again")
    args = parser.parse_args()
    pool = candidates(args.cap_card, res=tuple(args.res), skip_texts=earlier_texts(exclude_batch=args.batch))
    chosen = pick(pool, band=args.band, per_side=args.per_side, clear=args.clear)
    fits = [run for ratio, run in chosen if ratio <= 1]
    ooms = [run for ratio, run in chosen if ratio > 1]
    verdict_runs = [run for pair in itertools.zip_longest(fits, ooms) for run in pair if run]  # fit/OOM alternate
    verdict_runs += [repeated(spec) for spec in args.repeat]
    uncapped = [] if args.no_uncapped else UNCAPPED
    runset = {
        "schema": "memplan.runset/1", "batch": args.batch, "card": args.card, "steps": 3,
        "description": (f"{len(verdict_runs)} verdict runs at {args.cap_card}'s CUDA-visible capacity (needed within "
                        f"+-{args.band:.0%}{f', beyond +-{args.clear:.1%},' if args.clear else ''} by the estimate; {len(fits)} predicted to fit, {len(ooms)} to run out), "
                        f"fit and OOM alternating{f', then {len(args.repeat)} repeated' if args.repeat else ''}, "
                        f"between {len(uncapped)} uncapped runs measuring {args.card}'s context; "
                        "written by benchmarks/make_runset.py"),
        "runs": [*uncapped[:1], *verdict_runs, *uncapped[1:]],  # the no-NCCL context first: cheap, never skipped
    }
    print(yaml.safe_dump(runset, sort_keys=False, width=120), end="")
    for ratio, run in chosen:
        print(f"# {run['name']}: needed/capacity {ratio:.3f}")


if __name__ == "__main__":
    main()
