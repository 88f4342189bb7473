#!/usr/bin/env python3
"""Plan, probe and compare: the accuracy benchmark.

On a GPU machine, runs every configuration of a run set through `memplan probe` (one subprocess per
run, packed onto the machine's GPUs so that single-GPU runs go in parallel), appends every record to
one JSONL file, then prints estimate-vs-measured for each record (memplan validate).

    python3 benchmarks/accuracy.py --set smoke --out $OUT/probes.jsonl        # on the GPU machine
    python3 benchmarks/accuracy.py --list                                      # show the run sets

Runs are data (RUN_SETS below): name, model, probe flags, number of GPUs. The same records then feed
`memplan calibrate` (on the calibration split) and `memplan validate` (held-out split): see
docs/accuracy.md for the split and the command that reproduces the tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = "tests/fixtures/profiles/tiny-sa2va.yaml"


@dataclass
class Run:
    name: str
    model: str | None  # None: the plan file's model
    flags: list[str]
    gpus: int = 1
    timeout: int = 420
    cap: float | None = None  # --vram-cap for this run (the batch's --vram-cap otherwise)
    env: dict = field(default_factory=dict)  # e.g. a MEMPLAN_PROBE_FAULT for the fault demos
    plan_flags: dict = field(default_factory=dict)  # plan_from_flags keywords of a verdict run (its estimate)


def _r(name: str, model: str | None, *flags: str, gpus: int = 1, timeout: int = 420, cap: float | None = None,
       env: dict | None = None) -> Run:
    return Run(name, model, list(flags), gpus, timeout, cap, env or {})


EMITTED = "reports/emitted"


def emitted(name: str, gpus: int, cap: float, timeout: int = 420) -> Run:
    """Train with a DeepSpeed config `memplan search --emit-deepspeed` wrote, under --vram-cap."""
    return _r(f"emitted-{name}", None, "--plan", f"{EMITTED}/{name}.plan.yaml", "--deepspeed-config",
              f"{EMITTED}/{name}.json", gpus=gpus, timeout=timeout, cap=cap)


PT = ("--engine", "pytorch")
Z = lambda stage: ("--zero", str(stage))  # noqa: E731

RUN_SETS: dict[str, list[Run]] = {
    # A first pass over the plan space on Sa2VA-1B, 1/2/4 GPUs, every engine.
    "first": [
        _r("1b-pt-4k", "sa2va-1b", *PT, "--text-len", "4096"),
        _r("1b-pt-2k-nockpt", "sa2va-1b", *PT, "--text-len", "2048", "--no-ckpt"),
        _r("1b-z0-4k", "sa2va-1b", *Z(0), "--text-len", "4096"),
        _r("1b-z2-4k", "sa2va-1b", *Z(2), "--text-len", "4096"),
        _r("1b-z2-8k", "sa2va-1b", *Z(2), "--text-len", "8192"),
        _r("1b-z2-2k-r64-res512", "sa2va-1b", *Z(2), "--text-len", "2048", "--lora-rank", "64", "--res", "512"),
        _r("1b-z1-4k-tiles4", "sa2va-1b", *Z(1), "--text-len", "4096", "--tiles", "4"),
        _r("1b-z3-4k", "sa2va-1b", *Z(3), "--text-len", "4096"),
        _r("1b-z2-4k-2gpu", "sa2va-1b", *Z(2), "--text-len", "4096", gpus=2),
        _r("1b-z3-4k-2gpu", "sa2va-1b", *Z(3), "--text-len", "4096", gpus=2),
        _r("1b-z2-off-2gpu", "sa2va-1b", *Z(2), "--offload", "optimizer", "--text-len", "4096", gpus=2, timeout=540),
        _r("1b-z3-offall-2gpu", "sa2va-1b", *Z(3), "--offload", "all", "--text-len", "4096", gpus=2, timeout=540),
        _r("1b-pt-ddp-2gpu", "sa2va-1b", *PT, "--text-len", "4096", gpus=2),
        _r("1b-z2-4k-4gpu", "sa2va-1b", *Z(2), "--text-len", "4096", gpus=4),
    ],
    # More shapes on one GPU each: text, tiles, resolution, objects, rank, checkpointing, engines.
    "second": [
        _r("1b-pt-2k-t4-nockpt", "sa2va-1b", *PT, "--text-len", "2048", "--tiles", "4", "--no-ckpt"),
        _r("1b-z2-2k-t4-r64-res512", "sa2va-1b", *Z(2), "--text-len", "2048", "--tiles", "4", "--lora-rank", "64", "--res", "512"),
        _r("1b-z2-1k-t1-res768-o1", "sa2va-1b", *Z(2), "--text-len", "1024", "--tiles", "1", "--res", "768", "--objects", "1"),
        _r("1b-z3-8k-r256", "sa2va-1b", *Z(3), "--text-len", "8192", "--lora-rank", "256"),
        _r("1b-z1-4k-mb2", "sa2va-1b", *Z(1), "--text-len", "4096", "--micro-batch", "2"),
        _r("1b-pt-4k-t13-r16", "sa2va-1b", *PT, "--text-len", "4096", "--lora-rank", "16"),
        _r("1b-z2-4k-nockpt-t8", "sa2va-1b", *Z(2), "--text-len", "4096", "--tiles", "8", "--no-ckpt"),
        _r("1b-z0-2k-t4-o3", "sa2va-1b", *Z(0), "--text-len", "2048", "--tiles", "4", "--objects", "3"),
    ],
    # The rest of the plan space: checkpointing on, LoRA ranks,
    # full fine-tuning of a small LLM, shapes, the fp32-upcast recipe on plain PyTorch, 2B/4B/8B.
    "sweep": [
        _r("1b-z2-4k-ckpt", "sa2va-1b", *Z(2), "--text-len", "4096", "--ckpt"),
        _r("1b-pt-4k-ckpt", "sa2va-1b", *PT, "--text-len", "4096", "--ckpt"),
        _r("1b-z3-4k-ckpt-2gpu", "sa2va-1b", *Z(3), "--text-len", "4096", "--ckpt", gpus=2),
        _r("1b-z2-8k-ckpt-r16", "sa2va-1b", *Z(2), "--text-len", "8192", "--ckpt", "--lora-rank", "16"),
        _r("1b-z2-512-t1-o1", "sa2va-1b", *Z(2), "--text-len", "512", "--tiles", "1", "--objects", "1", "--res", "512"),
        _r("1b-z2-4k-o3-res768", "sa2va-1b", *Z(2), "--text-len", "4096", "--objects", "3", "--res", "768"),
        _r("0.5b-full-pt", "qwen2.5-0.5b", *PT, "--text-len", "2048", "--plan", "plans/full-llm.yaml"),
        _r("0.5b-full-z2-2gpu", "qwen2.5-0.5b", *Z(2), "--text-len", "2048", "--plan", "plans/full-llm.yaml", gpus=2),
        _r("2b-z2-4k-ckpt", "sa2va-internvl3-2b", *Z(2), "--text-len", "4096", "--ckpt"),
        _r("2b-z2-4k-ckpt-2gpu", "sa2va-internvl3-2b", *Z(2), "--text-len", "4096", "--ckpt", gpus=2),
        _r("4b-z2-4k-ckpt-4gpu", "sa2va-4b", *Z(2), "--text-len", "4096", "--ckpt", gpus=4),
        _r("4b-z3-off-4gpu", "sa2va-4b", *Z(3), "--offload", "optimizer", "--text-len", "4096", "--ckpt", gpus=4, timeout=540),
        _r("8b-z3-4gpu", "sa2va-8b", *Z(3), "--text-len", "4096", "--ckpt", gpus=4, timeout=560),
    ],
    # The config search emits for Sa2VA-8B on 4 x 24 GiB, trained under a 24 GiB cap; and
    # a rank that dies mid-backward in a 2-GPU ZeRO-2 run.
    "emitted": [
        emitted("sa2va-8b-4x24", gpus=4, cap=24, timeout=560),
        emitted("sa2va-1b-1x24", gpus=1, cap=24),
    ],
    # The seed's own baseline (Sa2VA-8B, ZeRO-2 + CPU optimizer offload, 4 x 24 GiB), under the cap.
    "seed": [_r("seed-baseline-cap24", None, "--plan", "plans/seed/baseline.yaml", gpus=4, timeout=420, cap=24)],
    "faults": [
        _r("fault-rank1-dies-in-backward", "sa2va-1b", *Z(2), "--text-len", "2048", "--tiles", "4", gpus=2, timeout=300,
           env={"MEMPLAN_PROBE_FAULT": "1:17@backward"}),
    ],
    "smoke": [
        _r("tiny-pt", TINY, *PT, "--text-len", "256", "--tiles", "2", "--res", "256", "--objects", "2", "--lora-rank", "8"),
        _r("tiny-z2", TINY, *Z(2), "--text-len", "256", "--tiles", "2", "--res", "256", "--objects", "2", "--lora-rank", "8"),
    ],
}


VERDICT_AXES = {  # (texts, tiles, objects, resolutions) of each verdict set
    "verdicts": ((2048, 3072, 4096, 5120, 6144, 8192), (4, 13), (5,), (1024, 768)),
    # the second set, chosen after the pressure ratio was fitted: none of its plans was measured before
    "verdicts2": ((2560, 3584, 4608, 5632, 7168), (6, 10), (3,), (1024, 768)),
    # the third, chosen after pressure_block (the stranded share of the logits block) was fitted
    "verdicts3": ((3328, 4352, 5376, 6656, 7680), (5, 9), (2,), (1024, 512)),
}
VERDICT_COUNTS = {"verdicts3": 8}


def verdict_runs(cap_gib: float = 24.0, band: float = 0.15, count: int = 16,  # noqa: C901
                 axes: str = "verdicts") -> list[Run]:
    """Single-GPU Sa2VA-1B/2B plans whose estimated device peak (on a card of ``cap_gib``) lies within
    +-band of the cap, spread evenly over the band: the verdict test. Each is probed with
    --vram-cap CAP and must fit iff it is estimated to."""
    from memplan.spec.flags import plan_from_flags
    from memplan.estimate.peak import estimate
    from memplan.spec.loading import load_calibration, load_profile
    from memplan.probe.shapes import ProbeBuildError, input_shapes

    calibration = load_calibration(None)
    candidates: list[tuple[float, Run]] = []
    for model in ("sa2va-1b", "sa2va-internvl3-2b"):
        profile = load_profile(model)
        texts, tile_counts, object_counts, resolutions = VERDICT_AXES[axes]
        for engine, text, ckpt, tiles, objects, res in itertools.product(
                ("z2", "pt"), texts, (True, False), tile_counts, object_counts, resolutions):
            flags = dict(gpus=1, vram=cap_gib, text_len=text, ckpt=ckpt, tiles=tiles, res=res, objects=objects,
                         **({"zero": 2} if engine == "z2" else {"engine": "pytorch"}))
            plan = plan_from_flags(None, **flags)
            try:
                input_shapes(profile, plan)
            except ProbeBuildError:  # image tokens do not fit in the text: the probe refuses it
                continue
            result = estimate(profile, plan, calibration)
            ratio = result.needed_bytes / (cap_gib * 2**30)  # what the verdict is decided on
            if abs(ratio - 1) <= band:
                args = [*(Z(2) if engine == "z2" else PT), "--text-len", str(text), "--tiles", str(tiles),
                        "--res", str(res), "--objects", str(objects), "--ckpt" if ckpt else "--no-ckpt"]
                name = (f"cap-{model.removeprefix('sa2va-')}-{engine}-{text}-t{tiles}-r{res}-o{objects}-"
                        f"{'ck' if ckpt else 'nock'}")
                candidates.append((ratio, Run(name, model, args, cap=cap_gib, plan_flags=flags)))
    chosen: list[Run] = []
    for i in range(count):  # nearest unchosen candidate to evenly spaced targets across the band
        target = 1 - band + 2 * band * (i + 0.5) / count
        best = min((c for c in candidates if c[1] not in chosen), key=lambda c: abs(c[0] - target), default=None)
        if best is not None:
            chosen.append(best[1])
    return chosen


def probe_command(run: Run, out: Path, vram_cap: float | None, timeout: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "memplan.cli.main", "probe", *(["--model", run.model] if run.model else []),
           "--gpus", str(run.gpus), "--out", str(out), "--timeout", str(int((timeout or run.timeout) - 30)), *run.flags]
    cap = run.cap or vram_cap
    if cap:
        cmd += ["--vram-cap", str(cap)]
    return cmd


MIN_RUN_S = 100  # do not start a run with less time than this left in --budget


def schedule(runs: list[Run], out: Path, total_gpus: int, vram_cap: float | None, log_dir: Path,
             budget_s: float | None = None) -> list[dict]:
    """Launch runs as GPUs free up (largest first, in the given order otherwise); each subprocess sees
    only its GPUs. With a budget, each run's probe timeout is cut to what is left (it then records a
    timeout itself) and runs that could not get MIN_RUN_S are skipped and listed."""
    pending = sorted(runs, key=lambda r: -r.gpus)
    free = list(range(total_gpus))
    active: list[tuple[subprocess.Popen, Run, list[int], float]] = []
    results = []
    deadline = time.time() + budget_s if budget_s else None
    while pending or active:
        left = deadline - time.time() if deadline else None
        if left is not None and left < MIN_RUN_S:
            for run in pending:
                results.append({"name": run.name, "rc": None, "seconds": 0, "skipped": "budget"})
                print(f"[{time.strftime('%H:%M:%S')}] {run.name}: skipped (budget)", flush=True)
            pending = []
        for run in list(pending):
            if run.gpus <= len(free):
                gpus, free = free[: run.gpus], free[run.gpus:]
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "PYTHONUNBUFFERED": "1",
                       "MASTER_PORT": str(29500 + gpus[0]), **run.env}
                timeout = min(run.timeout, left) if left is not None else run.timeout
                log = open(log_dir / f"{run.name}.log", "w")
                proc = subprocess.Popen(probe_command(run, out, vram_cap, timeout), cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                active.append((proc, run, gpus, time.time()))
                pending.remove(run)
        time.sleep(1)
        for item in list(active):
            proc, run, gpus, start = item
            elapsed = time.time() - start
            if proc.poll() is None and (elapsed > run.timeout or (deadline and time.time() > deadline + 20)):
                os.killpg(proc.pid, 9)
                proc.wait()
            if proc.poll() is not None:
                active.remove(item)
                free = sorted(free + gpus)
                results.append({"name": run.name, "rc": proc.returncode, "seconds": round(elapsed, 1)})
                print(f"[{time.strftime('%H:%M:%S')}] {run.name}: rc={proc.returncode} {elapsed:.0f}s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default=["smoke"], nargs="+", choices=sorted([*RUN_SETS, *VERDICT_AXES]),
                        help="run sets, in order; 'verdicts' picks plans estimated within 15%% of --vram-cap (default 24)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole batch (runs are cut to fit)")
    parser.add_argument("--only", nargs="*", help="run names to keep")
    parser.add_argument("--skip", nargs="*", default=[], help="run names to leave out")
    parser.add_argument("--out", type=Path, default=REPO / "reports/probes/probes.jsonl")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs on this machine (default: all visible)")
    parser.add_argument("--vram-cap", type=float, default=None)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    pool = [run for name in args.set for run in (verdict_runs(args.vram_cap or 24.0, axes=name,
                                                              count=VERDICT_COUNTS.get(name, 16))
                                                   if name in VERDICT_AXES else RUN_SETS[name])]
    runs = [r for r in pool if (not args.only or r.name in args.only) and r.name not in args.skip]
    if args.list:
        for r in runs:
            cap = f" cap {r.cap:g}" if r.cap else ""
            print(f"{r.name:28s} {r.gpus} GPU  {r.model or '(plan)':12s} {' '.join(r.flags)}{cap}")
        return
    total = args.gpus
    if total is None:
        import torch

        total = torch.cuda.device_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = args.out.parent / "logs"
    log_dir.mkdir(exist_ok=True)
    results = schedule(runs, args.out.resolve(), total, args.vram_cap, log_dir,
                       args.budget)
    (args.out.parent / "batch.json").write_text(json.dumps(results, indent=1))
    subprocess.run([sys.executable, "-m", "memplan.cli.main", "validate", str(args.out)], cwd=REPO)


if __name__ == "__main__":
    main()
