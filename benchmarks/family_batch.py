#!/usr/bin/env python3
"""Pre-register capped verdicts at sequence lengths never traced, from traces of the same plans at others.

    python benchmarks/family_batch.py --traces-dir DIR --runset benchmarks/stacks/runset-replay-f.yaml \
        --out reports/probes/predictions/replay-f-family.json

For each family below (one plan, traced at two or three lengths by earlier batches; the traces are in
reports/probes/traces/*.tar, extracted into --traces-dir), the trace at every length of a window is synthesized
(memplan.planning.trace_family) and replayed at the card's allocator limit under the default allocator. The
window's first length that runs out marks the boundary; the batch runs the last length before it that fits and
that first OOM (a step of 64 tokens apart; traced lengths are skipped), capped at the card: the hardest two plans to call of each family, and,
where the replay says a longer length fits again (the verdict is not monotonic in the length: where the blocks land
decides), the first such length.
Writes the run set (schema memplan.runset/1) and the family replay's verdicts; commit both, and the estimate's
predictions (`memplan predict RUNSET`), before the batch runs (benchmarks/run_runset.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STEP = 64
SA2VA = {"engine": "pytorch", "objects": 1, "res": 512}
# name: model, plan file (benchmarks/stacks/), flags less text_len, traced runs, cards with the window to scan
FAMILIES = [
    ("ds-lora-q3", "qwen2.5-3b", "plans/trainer-lora-ds.yaml", {}, ["rd-ds-lora-q3-7296", "re-ds-lora-q3-15104"],
     {"rtx-3090": (6400, 8192), "a100-40gb": (13824, 16384)}),
    ("t-vl1b-3t", "internvl2.5-1b", "plans/trainer-vl-lora.yaml", {"tiles": 3},
     ["rd-t-vl1b-3t-10624", "re-t-vl1b-3t-18688"], {"rtx-3090": (9216, 11776), "a100-40gb": (17408, 20480)}),
    ("l-vl1b-7t", "internvl2.5-1b", "plans/loop-vl-lora.yaml", {"tiles": 7}, ["rd-l-vl1b-7t-8832", "re-l-vl1b-7t-15744"],
     {"rtx-3090": (7680, 9728), "a100-40gb": (14336, 17408)}),
    ("t-eager-q15", "qwen2.5-1.5b", "plans/trainer-lora-eager.yaml", {}, ["rd-t-eager-q15-8320", "re-t-eager-q15-11904"],
     {"rtx-3090": (7040, 9216), "a100-40gb": (11008, 13312)}),
    ("l-lora-q3", "qwen2.5-3b", "plans/loop-lora.yaml", {},
     ["ra-l-lora-q3-6528", "rb-l-lora-q3-6720", "ra-l-lora-q3-6912"], {"rtx-3090": (5504, 7168)}),
    ("t-lora-q3", "qwen2.5-3b", "plans/trainer-lora.yaml", {}, ["rc-t-lora-q3-7616", "rb-t-lora-q3-7872"],
     {"rtx-3090": (7168, 9216)}),
    ("s1b-ck-t5", "sa2va-1b", None, {**SA2VA, "ckpt": True, "tiles": 5}, ["rb-s1b-ck-t5-7104", "rb-s1b-ck-t5-7360"],
     {"rtx-3090": (5632, 7680)}),
    ("s1b-nock-t5", "sa2va-1b", None, {**SA2VA, "ckpt": False, "tiles": 5},
     ["rb-s1b-nock-t5-3648", "rb-s1b-nock-t5-3840"], {"rtx-3090": (3072, 4352)}),
]
CARD_TAG = {"rtx-3090": "3090", "a100-40gb": "a40g"}


def scan(family, traces_dir: Path) -> dict:
    from memplan.planning.replay import allocator_limit
    from memplan.planning.trace_family import align, ladder, laws, scan_lengths
    from memplan.spec.cards import parse_vram_cap
    from memplan.spec.trace import read_trace

    name, _model, _plan, _flags, members, cards = family
    aligned = align([read_trace(traces_dir / f"{member}.trace.json.gz") for member in members])
    out = {"family": name, "traced": members, "tokens": list(aligned.tokens), "laws": laws(aligned), "cards": {}}
    for card, (low, high) in cards.items():
        # a traced length is no prediction; the limit reads only the header, which every length shares
        lengths = ladder(start=low, stop=high, step=STEP, skip=aligned.tokens)
        limit = allocator_limit(aligned.base, parse_vram_cap(card))
        scanned = scan_lengths(aligned, lengths, limit_bytes=limit)
        rows = [{"tokens": tokens, "verdict": "fits" if result.fits else "oom", "limit_bytes": limit,
                 "peak_reserved_bytes": result.peak_reserved_bytes,
                 "failed_request_bytes": result.failure.requested_bytes if result.failure else None}
                for tokens, result in scanned.rows]
        first_oom = next((i for i, row in enumerate(rows) if row["verdict"] == "oom"), None)
        flips = sum(a["verdict"] != b["verdict"] for a, b in zip(rows, rows[1:]))
        targets = [] if first_oom in (None, 0) else [rows[first_oom - 1], rows[first_oom]]
        back = next((row for row in rows[first_oom:] if row["verdict"] == "fits"), None) if targets else None
        if back is not None:
            targets.append({**back, "back": True})
        out["cards"][card] = {"window": [low, high], "flips": flips, "scan": [(r["tokens"], r["verdict"]) for r in rows],
                              "targets": targets}
    return out


def runset_document(scans: list[dict]) -> tuple[dict, dict[str, str]]:
    """The run set, and the family replay's verdict of each of its runs."""
    runs, backs, verdicts = [], [], {}
    for family, result in zip(FAMILIES, scans):
        name, model, plan, flags, members, _ = family
        for card, entry in result["cards"].items():
            for target in entry["targets"]:
                run = {"name": f"rf-{name}-{CARD_TAG[card]}-{target['tokens']}", "model": model,
                       "flags": {**flags, "text_len": target["tokens"]}, "vram_cap": card, "timeout_s": 120,
                       "purpose": f"family {name} (traced at {', '.join(map(str, result['tokens']))}): the synthesized "
                                  f"trace's replay says {target['verdict']} at the {card}"}
                if plan:
                    run = {**run, "plan": plan}
                if target.get("back"):
                    run["purpose"] += " (a fit at a length above one it runs out at)"
                (backs if target.get("back") else runs).append(run)
                verdicts[run["name"]] = target["verdict"]
    runs += backs  # the boundary pairs first, then the fits past a first OOM
    return {"schema": "memplan.runset/1", "batch": "replay-f", "card": "h100-sxm", "steps": 4,
            "description": ("Verdicts at sequence lengths never traced, from traces of the same plans at other lengths "
                            "(benchmarks/family_batch.py, memplan replay --text-len): for eight plans over every stack, "
                            "the last length that fits and the first that runs out by the synthesized trace's replay, a "
                            "step of 64 tokens apart, and the first longer length it says fits again, capped at the RTX "
                            "3090 (and, for four, the A100-40GB) under the default allocator. The family replay's verdicts (replay-f-family.json) and the estimate's "
                            "(replay-f.jsonl) are committed before any run. Stated before the runs: if the trace family "
                            "and the replay hold, every verdict is right; a miss is reported as one. Written on 2026-12-07"),
            "runs": runs}, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces-dir", type=Path, required=True, help="the traces of reports/probes/traces/*.tar, extracted")
    parser.add_argument("--runset", type=Path, required=True, help="run set to write (refused if it exists)")
    parser.add_argument("--out", type=Path, required=True, help="the family replay's verdicts (JSON; refused if it exists)")
    args = parser.parse_args()
    for path in (args.runset, args.out):
        if path.exists():
            sys.exit(f"error: {path} exists; predictions are written once")
    sys.path.insert(0, str(REPO))
    from memplan.planning.protocol import estimator_revision

    scans = [scan(family, args.traces_dir) for family in FAMILIES]
    document, run_verdicts = runset_document(scans)
    args.runset.write_text("# Run set for benchmarks/run_runset.py and `memplan predict` (schema memplan.runset/1),\n"
                           "# written by benchmarks/family_batch.py; plans are relative to this folder.\n"
                           + yaml.safe_dump(document, sort_keys=False, width=200))
    verdicts = {"batch": "replay-f", "revision": estimator_revision(also=("benchmarks/family_batch.py",)),
                "families": scans,
                "runs": [{"name": name, "verdict": verdict} for name, verdict in run_verdicts.items()]}
    args.out.write_text(json.dumps(verdicts, indent=1))
    print("| family | traced at | card | flips in the window | last fit / first OOM / next fit (tokens) |")
    print("|---|---|---|---:|---|")
    for result in scans:
        for card, entry in result["cards"].items():
            pair = " / ".join(str(t["tokens"]) for t in entry["targets"]) or "no boundary in the window"
            print(f"| {result['family']} | {', '.join(map(str, result['tokens']))} | {card} | {entry['flips']} | {pair} |")


if __name__ == "__main__":
    main()
