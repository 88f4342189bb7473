#!/usr/bin/env python3
"""Steady-state step times on one H200 for the step-time model, against predictions committed first.

    python benchmarks/steptime_batch.py --predict --predictions P.json   # here, before the runs (commit P.json)
    python benchmarks/steptime_batch.py --set c --predict --predictions P.json   # the second run set
    python benchmarks/steptime_batch.py --predictions P.json --also OLD.json  # on the GPU machine: records
                                                                              # under $OUT, table last

--predictions (default PREDICTIONS, the first file, written at 1d50840 with the H100 terms) is the file
--predict writes (never over an existing one without --force) and the run's table reads; --also adds
more predictions files of the same runs to the table: per file, its predicted seconds and the ratio
measured/predicted per run, and a summary line (Spearman, share within 30% and 50%, median ratio).
--score RECORDS.jsonl prints that table from the records of an earlier batch instead of running.

Each run is `memplan probe` in its own subprocess (scripts/gpu_probe_batch.py run_one: a crash or hang
of one run cannot stop the batch) with --steps 5, so that every run has at least three steps past its
warm-up (memplan.probe.records.warmup_steps: 1, ZeRO-3 2). The table compares each record's steady
step (records.steady_step_seconds) with the committed prediction; pre-registered means: predicted by the
calibration of the commit that wrote the file (its "revision"), before the runs. Expected runtime on one H200: about 6
minutes (the ZeRO-3 runs spend about 30 s on DeepSpeed's trace-recording step).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
PREDICTIONS = ROOT / "reports" / "probes" / "steptime-h200-predictions.json"
STEPS = 5
BUDGET_S = 480  # start no run after this many seconds (the device allows 600 per command)
TINY = "tests/fixtures/profiles/tiny-sa2va.yaml"

# name, model, plan_from_flags keywords (memplan.spec.flags.plan_from_flags), timeout_s; cheap runs first
RUNS: list[dict] = [
    {"name": "tiny-zero3", "model": TINY, "plan": {"text_len": 256, "tiles": 2, "res": 256, "objects": 3,
                                                   "lora_rank": 8, "zero": 3}, "timeout": 150},
    {"name": "1b-pytorch", "model": "sa2va-1b", "plan": {"engine": "pytorch", "zero": 0}, "timeout": 150},
    {"name": "1b-zero2", "model": "sa2va-1b", "plan": {"zero": 2}, "timeout": 150},
    {"name": "1b-zero2-offload", "model": "sa2va-1b", "plan": {"zero": 2, "offload": "optimizer"}, "timeout": 180},
    {"name": "1b-zero3", "model": "sa2va-1b", "plan": {"zero": 3}, "timeout": 200},
    {"name": "1b-zero3-offload-all", "model": "sa2va-1b", "plan": {"zero": 3, "offload": "all"}, "timeout": 240},
    {"name": "4b-zero2", "model": "sa2va-4b", "plan": {"zero": 2}, "timeout": 200},
]
# The second set (--set c, pre-registered 2026-12-03): plans the first never ran, to test the model
# beyond the runs its H200 terms were fitted beside: another composition (InternVL3-2B), ZeRO-1, a
# micro-batch of 2, ZeRO-3 on the 4B, plain PyTorch on the 4B.
RUNS_C: list[dict] = [
    {"name": "2b-pytorch", "model": "sa2va-internvl3-2b", "plan": {"engine": "pytorch", "zero": 0}, "timeout": 150},
    {"name": "1b-zero1", "model": "sa2va-1b", "plan": {"zero": 1}, "timeout": 150},
    {"name": "1b-zero2-mb2", "model": "sa2va-1b", "plan": {"zero": 2, "micro_batch": 2}, "timeout": 150},
    {"name": "2b-zero2-offload", "model": "sa2va-internvl3-2b", "plan": {"zero": 2, "offload": "optimizer"},
     "timeout": 180},
    {"name": "4b-pytorch", "model": "sa2va-4b", "plan": {"engine": "pytorch", "zero": 0}, "timeout": 180},
    {"name": "4b-zero3", "model": "sa2va-4b", "plan": {"zero": 3}, "timeout": 240},
]
# The third set (--set d, pre-registered 2026-12-04): ZeRO-3 beyond the two models its fetch term was seen on
# (Sa2VA-1B and -4B), with a micro-batch of 2 and with optimizer offload, beside ZeRO-1/2 on the same models;
# set c's ZeRO-3 run was 1.1x too slow and set b's 1.7x, so these size that term.
RUNS_D: list[dict] = [
    {"name": "2b-zero2", "model": "sa2va-internvl3-2b", "plan": {"zero": 2}, "timeout": 150},
    {"name": "2b-zero3", "model": "sa2va-internvl3-2b", "plan": {"zero": 3}, "timeout": 220},
    {"name": "1b-zero3-mb2", "model": "sa2va-1b", "plan": {"zero": 3, "micro_batch": 2}, "timeout": 220},
    {"name": "4b-zero1", "model": "sa2va-4b", "plan": {"zero": 1}, "timeout": 180},
    {"name": "4b-zero3-offload", "model": "sa2va-4b", "plan": {"zero": 3, "offload": "optimizer"}, "timeout": 260},
]
# The fourth set (--set e, pre-registered 2026-12-06, predicted for both cards the device may lend, H200 with
# its own terms and H100 with the default terms): plans no set ran, so that nothing of it was fitted on: the
# seed's plan B (ZeRO-3 + full offload) on InternVL3-2B, twice the default text (8,192 tokens), ZeRO-2 + optimizer
# offload on the 4B, ZeRO-1 with a micro-batch of 2, and plain PyTorch with 4 tiles and 2,048 tokens (the default
# plan is 13 tiles and 4,096 tokens, which sets b-d ran).
RUNS_E: list[dict] = [
    {"name": "1b-zero2-t8192", "model": "sa2va-1b", "plan": {"zero": 2, "text_len": 8192}, "timeout": 150},
    {"name": "2b-zero1-mb2", "model": "sa2va-internvl3-2b", "plan": {"zero": 1, "micro_batch": 2}, "timeout": 150},
    {"name": "1b-pytorch-t4", "model": "sa2va-1b", "plan": {"engine": "pytorch", "zero": 0, "tiles": 4,
                                                           "text_len": 2048}, "timeout": 150},
    {"name": "4b-zero2-offload", "model": "sa2va-4b", "plan": {"zero": 2, "offload": "optimizer"}, "timeout": 200},
    {"name": "2b-zero3-offload-all", "model": "sa2va-internvl3-2b", "plan": {"zero": 3, "offload": "all"},
     "timeout": 240},
]
# The fifth set (--set f, pre-registered 2026-12-07 for both cards the device lends, each with its own terms; the
# step-time model that scored set e, unchanged): plans no set ran, leaning on the terms set e missed or the records least
# constrain: CPU Adam (ZeRO-2 + optimizer offload on the 1B at 8,192 tokens; plan B on the 4B), ZeRO-3's fetch
# at 8,192 tokens on InternVL3-2B, and micro-batches of 4 (ZeRO-1, 1B) and 2 (ZeRO-2, 4B).
RUNS_F: list[dict] = [
    {"name": "1b-zero1-mb4", "model": "sa2va-1b", "plan": {"zero": 1, "micro_batch": 4}, "timeout": 180},
    {"name": "4b-zero2-mb2", "model": "sa2va-4b", "plan": {"zero": 2, "micro_batch": 2}, "timeout": 200},
    {"name": "1b-zero2-offload-t8192", "model": "sa2va-1b", "plan": {"zero": 2, "offload": "optimizer",
                                                                    "text_len": 8192}, "timeout": 200},
    {"name": "2b-zero3-t8192", "model": "sa2va-internvl3-2b", "plan": {"zero": 3, "text_len": 8192}, "timeout": 240},
    {"name": "4b-zero3-offload-all", "model": "sa2va-4b", "plan": {"zero": 3, "offload": "all"}, "timeout": 280},
]
# The sixth set (--set g, pre-registered 2026-12-07 for both cards with the model that scored set f, unchanged): the
# first records that time their phases (phase_times_s), all with the optimizer offloaded, so that each measures
# CPU Adam in its own phase, over trainable partitions of about 350M (1B), 630M (InternVL3-2B), 880M (4B) and
# 1.15B (8B) parameters, under ZeRO-1, -2 and -3; the 8B last, so that a cut budget loses only it.
RUNS_G: list[dict] = [
    {"name": "1b-zero1-offload", "model": "sa2va-1b", "plan": {"zero": 1, "offload": "optimizer"}, "timeout": 180},
    {"name": "1b-zero3-offload-mb2", "model": "sa2va-1b", "plan": {"zero": 3, "offload": "optimizer",
                                                                  "micro_batch": 2}, "timeout": 220},
    {"name": "2b-zero2-offload-t8192", "model": "sa2va-internvl3-2b", "plan": {"zero": 2, "offload": "optimizer",
                                                                              "text_len": 8192}, "timeout": 200},
    {"name": "4b-zero2-offload-mb2", "model": "sa2va-4b", "plan": {"zero": 2, "offload": "optimizer",
                                                                  "micro_batch": 2}, "timeout": 220},
    {"name": "8b-zero2-offload", "model": "sa2va-8b", "plan": {"zero": 2, "offload": "optimizer"}, "timeout": 300},
]
# The seventh set (--set h, pre-registered 2026-12-07 with the H100 terms refitted after set g, CPU Adam from the
# optimizer-step phase): three plans no set ran, two with the optimizer offloaded, one without.
RUNS_H: list[dict] = [
    {"name": "1b-zero2-offload-mb2", "model": "sa2va-1b", "plan": {"zero": 2, "offload": "optimizer",
                                                                  "micro_batch": 2}, "timeout": 150},
    {"name": "2b-zero1-offload", "model": "sa2va-internvl3-2b", "plan": {"zero": 1, "offload": "optimizer"},
     "timeout": 150},
    {"name": "4b-zero1-mb2", "model": "sa2va-4b", "plan": {"zero": 1, "micro_batch": 2}, "timeout": 150},
]
# The eighth set (--set i, pre-registered 2026-12-07 with the same refitted terms as set h): set g's Sa2VA-8B plan,
# which timed out while building the model when the batch budget left it 128 s, given a time limit of its own.
RUNS_I: list[dict] = [
    {"name": "8b-zero2-offload", "model": "sa2va-8b", "plan": {"zero": 2, "offload": "optimizer"}, "timeout": 420},
]
# The ninth set (--set j, pre-registered 2026-12-07 with the terms of sets h and i, unchanged): not chosen by hand but
# drawn at random (seed J_SEED) from a stated grid, so that no judgement of which plans the model handles picks them.
J_SEED = 20261207
J_RUNS = 8
J_MODELS = ("sa2va-1b", "sa2va-internvl3-2b", "sa2va-4b")  # the 8B: its model build alone took over 2 min (set g)
J_ENGINES = {"pytorch": {"engine": "pytorch", "zero": 0}, "zero1": {"zero": 1}, "zero2": {"zero": 2},
             "zero2-offload": {"zero": 2, "offload": "optimizer"}, "zero3": {"zero": 3},
             "zero3-offload": {"zero": 3, "offload": "optimizer"}, "zero3-offload-all": {"zero": 3, "offload": "all"}}
J_MICRO_BATCH = (1, 2)
J_TEXT_LEN = (2048, 4096, 8192)
J_TILES = (4, 13)


J_DEFAULTS = {"micro_batch": 1, "text_len": 4096, "tiles": 13}  # plan_from_flags's defaults for the grid's axes


def plan_key(*, model: str, plan: dict) -> tuple:
    """A run's model and flags with J_DEFAULTS filled in: two runs with equal keys probe the same plan."""
    return model, tuple(sorted({**J_DEFAULTS, **plan}.items()))


def drawn_runs(*, seed: int = J_SEED, count: int = J_RUNS, input_check: bool = True,
               earlier: list[list[dict]] | None = None) -> list[dict]:
    """``count`` plans drawn without replacement (random.Random(seed).sample, in the drawn order) from the grid
    J_MODELS x J_ENGINES x J_MICRO_BATCH x J_TEXT_LEN x J_TILES, less the plans an earlier set ran (``earlier``,
    default PRE_J; compared by plan_key) and those whose estimate does not fit an H100 clear of
    the tight band (memplan estimate on 79.65 GiB; the H100 is the smaller card the device lends). The time limit
    is a rule of the plan (150 s, +70 s for ZeRO-3, +40 s more with everything offloaded, +50 s for the 4B), never
    of a prediction. ``input_check`` drops plans whose image tokens overflow the sequence (spec.flags.check_sequence);
    set j was drawn before that check existed (input_check=False), and 2 of its 8 plans could not run."""
    import itertools
    import random

    from memplan.estimate.peak import estimate
    from memplan.spec.flags import check_sequence, plan_from_flags
    from memplan.spec.gpus import get_gpu
    from memplan.spec.loading import InputError, load_profile

    seen = {plan_key(model=run["model"], plan=run["plan"]) for runs in (PRE_J if earlier is None else earlier)
            for run in runs}
    vram = get_gpu("h100-sxm").vram_gib
    grid = []
    for model, engine, micro_batch, text_len, tiles in itertools.product(J_MODELS, J_ENGINES, J_MICRO_BATCH,
                                                                          J_TEXT_LEN, J_TILES):
        plan = {**J_ENGINES[engine], "micro_batch": micro_batch, "text_len": text_len, "tiles": tiles}
        if plan_key(model=model, plan=plan) in seen:
            continue
        shown = {key: value for key, value in plan.items() if J_DEFAULTS.get(key) != value}
        name = "-".join([model.removeprefix("sa2va-").removeprefix("internvl3-"), engine,
                         *(f"mb{micro_batch}",) * (micro_batch != 1), *(f"t{text_len}",) * (text_len != 4096),
                         *(f"tiles{tiles}",) * (tiles != 13)])
        timeout = 150 + 70 * (plan["zero"] == 3) + 40 * (plan.get("offload") == "all") + 50 * (model == "sa2va-4b")
        grid.append({"name": name, "model": model, "plan": shown, "timeout": timeout})
    drawn = []
    for run in random.Random(seed).sample(grid, len(grid)):
        profile, plan = load_profile(run["model"]), plan_from_flags(None, gpus=1, vram=vram, **run["plan"])
        if input_check:
            try:
                check_sequence(profile, plan)
            except InputError:
                continue
        if estimate(profile, plan).clear_fit:
            drawn.append(run)
        if len(drawn) == count:
            return drawn
    return drawn


PRE_J = [RUNS, RUNS_C, RUNS_D, RUNS_E, RUNS_F, RUNS_G, RUNS_H, RUNS_I]
RUNS_J: list[dict] = [  # drawn_runs(input_check=False) at the revision that wrote steptime-h100-j.json, pasted
    # here so that no later model change can redraw it
    {"name": "1b-zero3-t2048-tiles4", "model": "sa2va-1b",
     "plan": {"zero": 3, "text_len": 2048, "tiles": 4}, "timeout": 220},
    {"name": "4b-zero3-offload-tiles4", "model": "sa2va-4b",
     "plan": {"zero": 3, "offload": "optimizer", "tiles": 4}, "timeout": 270},
    {"name": "1b-zero2-mb2-t2048", "model": "sa2va-1b",
     "plan": {"zero": 2, "micro_batch": 2, "text_len": 2048}, "timeout": 150},
    {"name": "4b-zero2-offload-t2048", "model": "sa2va-4b",
     "plan": {"zero": 2, "offload": "optimizer", "text_len": 2048}, "timeout": 200},
    {"name": "1b-zero2-offload-mb2-t8192-tiles4", "model": "sa2va-1b",
     "plan": {"zero": 2, "offload": "optimizer", "micro_batch": 2, "text_len": 8192, "tiles": 4}, "timeout": 150},
    {"name": "1b-zero2-offload-mb2-tiles4", "model": "sa2va-1b",
     "plan": {"zero": 2, "offload": "optimizer", "micro_batch": 2, "tiles": 4}, "timeout": 150},
    {"name": "4b-zero1-mb2-tiles4", "model": "sa2va-4b",
     "plan": {"zero": 1, "micro_batch": 2, "tiles": 4}, "timeout": 200},
    {"name": "2b-zero1-tiles4", "model": "sa2va-internvl3-2b",
     "plan": {"zero": 1, "tiles": 4}, "timeout": 150},
]
# The tenth set (--set k, pre-registered 2026-12-07 after the frozen test of sets h, i and j was called, with the same
# terms, unchanged): a second draw from set j's grid, with the input check, less every plan sets b-j ran. K_RUNS is 6,
# not 8, so that the batch fits the device's 10 minutes a command (chosen before the draw was seen).
K_SEED = 20261208
K_RUNS = 6
PRE_K = [*PRE_J, RUNS_J]
RUNS_K: list[dict] = [  # drawn_runs(seed=K_SEED, count=K_RUNS, earlier=PRE_K) at the revision that wrote
    # steptime-h100-k.json, pasted here so that no later model change can redraw it
    {"name": "2b-zero3-offload-mb2-t8192", "model": "sa2va-internvl3-2b",
     "plan": {"zero": 3, "offload": "optimizer", "micro_batch": 2, "text_len": 8192}, "timeout": 220},
    {"name": "1b-zero3-mb2-tiles4", "model": "sa2va-1b",
     "plan": {"zero": 3, "micro_batch": 2, "tiles": 4}, "timeout": 220},
    {"name": "4b-zero2-offload-t2048-tiles4", "model": "sa2va-4b",
     "plan": {"zero": 2, "offload": "optimizer", "text_len": 2048, "tiles": 4}, "timeout": 200},
    {"name": "1b-pytorch-mb2-t8192-tiles4", "model": "sa2va-1b",
     "plan": {"engine": "pytorch", "zero": 0, "micro_batch": 2, "text_len": 8192, "tiles": 4}, "timeout": 150},
    {"name": "4b-zero3-offload-all-mb2", "model": "sa2va-4b",
     "plan": {"zero": 3, "offload": "all", "micro_batch": 2}, "timeout": 310},
    {"name": "2b-zero2-mb2-t2048-tiles4", "model": "sa2va-internvl3-2b",
     "plan": {"zero": 2, "micro_batch": 2, "text_len": 2048, "tiles": 4}, "timeout": 150},
]
# The noise set (--set n, 2026-12-07, written by hand): not a test of the model but of the measurement. Three plans
# run before (j's 0.848 s ZeRO-2 + optimizer offload, k's 0.591 s plain PyTorch and 0.359 s ZeRO-2 short step: a host-
# bound CPU Adam, a GPU-bound step, a framework-bound step), each three times, interleaved, in separate processes on
# one machine: the spread of one plan's steady step between processes is the floor under any per-plan model's error.
N_PLANS: list[dict] = [next(run for run in [*RUNS_J, *RUNS_K] if run["name"] == name) for name in
                       ("1b-zero2-offload-mb2-tiles4", "1b-pytorch-mb2-t8192-tiles4", "2b-zero2-mb2-t2048-tiles4")]
RUNS_N: list[dict] = [{**run, "name": f"{run['name']}-r{repeat}"} for repeat in (1, 2, 3) for run in N_PLANS]
SETS = {"b": RUNS, "c": RUNS_C, "d": RUNS_D, "e": RUNS_E, "f": RUNS_F, "g": RUNS_G, "h": RUNS_H, "i": RUNS_I,
        "j": RUNS_J, "k": RUNS_K, "n": RUNS_N}  # "b": the first set (its files predate the key and carry no "set")
FLAGS = {"text_len": "--text-len", "tiles": "--tiles", "res": "--res", "objects": "--objects",
         "lora_rank": "--lora-rank", "zero": "--zero", "engine": "--engine", "offload": "--offload",
         "micro_batch": "--micro-batch"}


def probe_flags(run: dict, device: str = "cuda") -> list[str]:
    flags = [item for key, value in run["plan"].items() for item in (FLAGS[key], str(value))]
    return [*flags, "--steps", str(STEPS), *(["--device", device] if device != "cuda" else [])]


def revision() -> str:
    """git HEAD of this checkout, + "-dirty" when memplan/ or this script has uncommitted changes
    (memplan.planning.protocol.estimator_revision)."""
    from memplan.planning.protocol import estimator_revision

    return estimator_revision(also=("benchmarks/steptime_batch.py",))


def predict(*, set_name: str = "b", card: str = "h200") -> dict:
    """The calibrated model's step time for every run of the set on one ``card`` (16 host cores), with its
    terms; ``card_terms`` says whether the shipped calibration has terms of that card's own."""
    from memplan.spec.flags import plan_from_flags
    from memplan.planning.steptime import default_terms, step_time
    from memplan.spec.gpus import get_gpu
    from memplan.spec.loading import CALIBRATION_PATH, load_profile

    gpu = get_gpu(card)
    terms = default_terms()
    out = {"revision": revision(), "calibration_sha256": hashlib.sha256(CALIBRATION_PATH.read_bytes()).hexdigest(),
           "card": gpu.name, "card_terms": gpu.name in terms.cards, "steps": STEPS, "set": set_name, "runs": {}}
    for run in SETS[set_name]:
        profile = load_profile(run["model"])
        plan = plan_from_flags(None, gpus=1, vram=gpu.vram_gib, **run["plan"])
        step = step_time(profile, plan, gpu, terms=terms, host_cores=16)
        out["runs"][run["name"]] = {"predicted_s": round(step.seconds, 4),
                                    "terms": {k: round(v, 4) for k, v in step.breakdown.items() if v}}
    return out


def read_predictions(*, path: Path) -> dict:
    """A predictions file --predict wrote; warns when its runs or step count differ from this script's."""
    predictions = json.loads(Path(path).read_text())
    missing = [run["name"] for run in SETS[predictions.get("set", "b")] if run["name"] not in predictions.get("runs", {})]
    if missing or predictions.get("steps") != STEPS:
        print(f"warning: {path}: steps {predictions.get('steps')} (here {STEPS}), no prediction for {missing}",
              flush=True)
    return predictions


def label(*, path: Path) -> str:
    """A short column label of a predictions file: its name without the steptime-h200 prefix."""
    stem = Path(path).stem.removeprefix("steptime-h200").strip("-_") or Path(path).stem
    return stem[:16]


def table(*, results: list[dict], files: dict[str, dict]) -> str:
    """Measured steady step vs every predictions file (label -> file): predicted s and measured/predicted
    per run, then a summary line per file over the runs that have both."""
    from memplan.planning.stepfit import accuracy
    from memplan.spec.record import steady_step_seconds

    head = "".join(f" {name + ' s':>16} {'ratio':>6}" for name in files)
    lines = [f"{'run':22} {'status':8} {'measured s':>10}{head}  steps"]
    rows: dict[str, list[dict]] = {name: [] for name in files}
    for record in results:
        run = record["_batch_name"]
        measured = steady_step_seconds(record.get("ranks") or [], record.get("plan") or {})
        cells = ""
        for name, predictions in files.items():
            predicted = predictions["runs"].get(run, {}).get("predicted_s")
            ratio = measured / predicted if measured and predicted else None
            if ratio is not None:
                rows[name].append({"predicted_s": predicted, "measured_s": measured, "ratio": ratio})
            cells += f" {predicted or float('nan'):16.3f} {f'{ratio:.2f}' if ratio is not None else '':>6}"
        steps = [round(t, 2) for t in ((record.get("ranks") or [{}])[0].get("step_times_s") or [])]
        lines.append(f"{run:22} {record['status']:8} {measured or float('nan'):10.3f}{cells}  {steps}")
    lines += optimizer_lines(results=results, files=files)
    lines.append("")
    for name, predictions in files.items():
        metrics = accuracy(rows[name])

        def show(key: str, spec: str) -> str:
            return "-" if metrics[key] is None else format(metrics[key], spec)

        lines.append(f"{name}: {metrics['runs']} of {len(results)} runs, Spearman {show('spearman', '.3f')}, "
                     f"within 30% {show('within_30', '.0%')}, within 50% {show('within_50', '.0%')}, median "
                     f"measured/predicted {show('median_ratio', '.2f')} ({predictions['_path']}, revision "
                     f"{predictions.get('revision', 'not recorded')})")
    return "\n".join(lines)


def optimizer_lines(*, results: list[dict], files: dict[str, dict]) -> list[str]:
    """For records that time their phases: the measured steady optimizer-step phase against each file's
    (memplan.planning.steptime.optimizer_phase_seconds of the predicted terms); none for older records."""
    from memplan.planning.steptime import optimizer_phase_seconds
    from memplan.spec.record import steady_phase_seconds

    timed = [(r, (steady_phase_seconds(r.get("ranks") or [], r.get("plan") or {}) or {}).get("optimizer_step"))
             for r in results]
    if not any(measured for _, measured in timed):
        return []
    head = "".join(f" {name + ' s':>16} {'ratio':>6}" for name in files)
    lines = ["", f"{'optimizer step phase':22} {'':8} {'measured s':>10}{head}"]
    for record, measured in timed:
        cells = ""
        for predictions in files.values():
            terms = predictions["runs"].get(record["_batch_name"], {}).get("terms")
            predicted = optimizer_phase_seconds(terms) if terms else None
            ratio = f"{measured / predicted:.2f}" if measured and predicted else ""
            cells += f" {predicted if predicted is not None else float('nan'):16.3f} {ratio:>6}"
        lines.append(f"{record['_batch_name']:22} {'':8} {measured or float('nan'):10.3f}{cells}")
    return lines


def scored(*, path: Path, runs: list[dict] = RUNS) -> list[dict]:
    """Records of an earlier batch in ``path``, each named by the run of ``runs`` with the most flags, all in
    its command (the last record of a run wins: a re-run replaces the earlier one)."""
    from memplan.probe.records import read_records

    named: dict[str, dict] = {}
    for record in read_records(path):
        words = (record.get("command") or "").split()
        pairs = set(zip(words, words[1:]))
        fits = [run for run in runs if ("--model", run["model"]) in pairs
                and all((FLAGS[key], str(value)) in pairs for key, value in run["plan"].items())]
        if fits:
            run = max(fits, key=lambda run: len(run["plan"]))
            named[run["name"]] = {**record, "_batch_name": run["name"]}
    return [named[run["name"]] for run in runs if run["name"] in named]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict", action="store_true", help="write the --predictions file and exit")
    parser.add_argument("--predictions", type=Path, default=PREDICTIONS,
                        help=f"predictions file to write (--predict) or score against (default "
                             f"{PREDICTIONS.relative_to(ROOT)})")
    parser.add_argument("--force", action="store_true", help="let --predict overwrite an existing file")
    parser.add_argument("--also", type=Path, action="extend", nargs="+", default=[],
                        help="more predictions files of the same runs for the table (repeatable)")
    parser.add_argument("--score", type=Path, help="print the table for an earlier batch's records and exit")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "reports/probes")) / "steptime-h200.jsonl")
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument("--set", choices=sorted(SETS), default="b", dest="set_name",
                        help="which run set: b (the first, 7 runs), c (6 plans b never ran), d (ZeRO-3 on more "
                             "models, 5 runs), e (5 plans no set ran, plan B among them), f (5 more, on the CPU "
                             "Adam and ZeRO-3 fetch terms), g (5 optimizer-offload plans, the first with phase "
                             "times), h (3 plans, after the refit on g), i (set g's "
                             "8B plan again, with its own time limit) or j (8 plans drawn at random from a grid)")
    parser.add_argument("--card", default="h200",
                        help="with --predict: the card the runs will be made on (profiles/gpus.yaml name, default "
                             "h200); a card without terms of its own is predicted with the default terms")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of the batch itself")
    args = parser.parse_args()
    if args.predict:
        if args.predictions.exists() and not args.force:
            print(f"{args.predictions} exists: pre-registered predictions are not overwritten (--force to do it)")
            return 1
        predictions = predict(set_name=args.set_name, card=args.card)
        if predictions["revision"].endswith("-dirty") or not re.fullmatch(r"[0-9a-f]{40}", predictions["revision"]):
            print(f"warning: revision {predictions['revision']}: commit the code first so that it names the model")
        args.predictions.parent.mkdir(parents=True, exist_ok=True)
        args.predictions.write_text(json.dumps(predictions, indent=2) + "\n")
        print(f"wrote {args.predictions} (revision {predictions['revision']})")
        return 0
    files = {}
    for path in [args.predictions, *args.also]:  # read all before the first run: a bad path fails now
        name = label(path=path)
        name = name if name not in files else f"{name}-{len(files)}"
        files[name] = {**read_predictions(path=path), "_path": str(path)}
    if args.score:
        print(table(results=scored(path=args.score, runs=SETS[args.set_name]), files=files), flush=True)
        return 0
    from gpu_probe_batch import run_one

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    results = []
    started = time.time()
    for run in SETS[args.set_name]:
        if args.only and run["name"] not in args.only:
            continue
        if time.time() - started > BUDGET_S:
            print(f"{run['name']}: skipped, past the batch budget of {BUDGET_S} s", flush=True)
            continue
        timeout = min(run["timeout"], max(60, int(BUDGET_S + 60 - (time.time() - started))))
        try:
            results.append(run_one({"name": run["name"], "model": run["model"], "flags": probe_flags(run, args.device),
                                    "timeout": timeout}, args.out))
        except Exception as error:  # noqa: BLE001 - one failing run must not stop the batch
            print(f"{run['name']}: batch error {error}", flush=True)
    print("\n" + table(results=results, files=files), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
