"""The H200 step-time batch script (benchmarks/steptime_batch.py): its pre-registered predictions files
are never overwritten by --predict, and its table scores the measured steps against several of them."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "steptime_batch.py"
BATCH = runpy.run_path(str(SCRIPT))


def _record(*, name: str, steps: list[float]) -> dict:
    run = next(run for run in BATCH["RUNS"] if run["name"] == name)
    return {"_batch_name": name, "status": "ok", "plan": {"engine": {"kind": "pytorch", "zero_stage": 0}},
            "ranks": [{"step_times_s": steps}],
            "command": f"memplan probe --model {run['model']} --gpus 1 {' '.join(BATCH['probe_flags'](run))}"}


def test_committed_predictions_cover_every_run():
    for path in (ROOT / "reports" / "probes" / "steptime-h200-predictions.json",
                 *sorted((ROOT / "reports" / "probes" / "predictions").glob("steptime-h200-*.json"))):
        predictions = json.loads(path.read_text())
        assert predictions["steps"] == BATCH["STEPS"], path
        runs = BATCH["SETS"][predictions.get("set", "b")]
        assert {run["name"] for run in runs} == set(predictions["runs"]), path


def test_predict_refuses_to_overwrite(tmp_path):
    target = tmp_path / "p.json"
    target.write_text("{}")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--predict", "--predictions", str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and target.read_text() == "{}"


def test_table_scores_every_file():
    files = {"new": {"runs": {"1b-pytorch": {"predicted_s": 0.5}, "1b-zero2": {"predicted_s": 1.0}},
                     "_path": "new.json", "revision": "abc"},
             "old": {"runs": {"1b-pytorch": {"predicted_s": 1.0}}, "_path": "old.json"}}
    results = [_record(name="1b-pytorch", steps=[3.0, 0.5, 0.5, 0.5, 0.5]),
               _record(name="1b-zero2", steps=[3.0, 1.0, 1.0, 1.0, 1.0])]
    text = BATCH["table"](results=results, files=files)
    assert "new: 2 of 2 runs, Spearman 1.000, within 30% 100%" in text
    assert "old: 1 of 2 runs" in text and "median measured/predicted 0.50" in text


def test_score_names_records_by_their_flags(tmp_path):
    path = tmp_path / "records.jsonl"
    base = json.loads((ROOT / "reports" / "probes" / "h200-stacks-b.jsonl").read_text().splitlines()[0])
    names = ("1b-zero2-offload", "1b-zero2", "1b-zero3-offload-all")
    path.write_text("".join(json.dumps({**base, "command": _record(name=name, steps=[])["command"]}) + "\n"
                            for name in names))
    assert [r["_batch_name"] for r in BATCH["scored"](path=path)] == ["1b-zero2", "1b-zero2-offload",
                                                                      "1b-zero3-offload-all"]


def test_table_shows_the_optimizer_phase_of_records_that_time_it():
    files = {"new": {"runs": {"1b-zero2": {"predicted_s": 1.0, "terms": {"cpu_adam": 0.4, "offload_copy": 0.3}}},
                     "_path": "new.json"}}
    plain = _record(name="1b-zero2", steps=[3.0, 1.0, 1.0, 1.0, 1.0])
    assert "optimizer step phase" not in BATCH["table"](results=[plain], files=files)
    phases = [{"forward": 0.3, "backward": 0.5, "optimizer_step": 0.25}] * 5
    timed = {**plain, "ranks": [{**plain["ranks"][0], "phase_times_s": phases}]}
    text = BATCH["table"](results=[timed], files=files)
    row = next(line for line in text.splitlines() if line.startswith("1b-zero2") and "0.250" in line)
    assert row.split()[1:] == ["0.250", "0.500", "0.50"]  # predicted 0.4 + 0.3 / 3, ratio measured / predicted


@pytest.mark.parametrize("drawn, before, count", [("RUNS_J", "PRE_J", "J_RUNS"), ("RUNS_K", "PRE_K", "K_RUNS")])
def test_the_drawn_set_is_new_plans_of_its_grid_named_back_by_their_flags(tmp_path, drawn, before, count):
    """Sets j and k (drawn at random from a grid): every plan lies in the grid, none was run by an earlier set, and
    scoring names each of its records back to its own run (the longest flag match wins)."""
    defaults, plan_key = BATCH["J_DEFAULTS"], BATCH["plan_key"]
    earlier = {plan_key(model=run["model"], plan=run["plan"]) for runs in BATCH[before] for run in runs}
    runs = BATCH[drawn]
    assert len(runs) == BATCH[count] and len({run["name"] for run in runs}) == len(runs)
    for run in runs:
        plan = {**defaults, **run["plan"]}
        assert run["model"] in BATCH["J_MODELS"] and plan["micro_batch"] in BATCH["J_MICRO_BATCH"]
        assert plan["text_len"] in BATCH["J_TEXT_LEN"] and plan["tiles"] in BATCH["J_TILES"]
        engine = {key: value for key, value in run["plan"].items() if key in ("engine", "zero", "offload")}
        assert engine in BATCH["J_ENGINES"].values()
        assert plan_key(model=run["model"], plan=run["plan"]) not in earlier, run["name"]
    base = json.loads((ROOT / "reports" / "probes" / "h200-stacks-b.jsonl").read_text().splitlines()[0])
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps({**base, "command": f"memplan probe --model {run['model']} --gpus 1 "
                                        + " ".join(BATCH["probe_flags"](run))}) + "\n" for run in reversed(runs)))
    assert [r["_batch_name"] for r in BATCH["scored"](path=path, runs=runs)] == [run["name"] for run in runs]


def test_set_k_is_the_draw_its_comment_names():
    """Set k as pasted is drawn_runs(seed=K_SEED, count=K_RUNS, earlier=PRE_K) with the input check: the draw's
    rule, not a hand, picked it (the estimate it filters on is frozen by tests/golden/estimates.json)."""
    assert BATCH["drawn_runs"](seed=BATCH["K_SEED"], count=BATCH["K_RUNS"], earlier=BATCH["PRE_K"]) == BATCH["RUNS_K"]


def test_the_repeats_report_finds_the_plans_timed_twice():
    """benchmarks/steptime_repeats.py: set c's six plans ran twice on H200s (h200-steptime-c and -c2); the
    command key drops --out/--timeout/--steps, and a plan run once is not listed."""
    repeats = runpy.run_path(str(ROOT / "benchmarks" / "steptime_repeats.py"))
    assert repeats["plan_command"]("memplan probe --zero 2 --ckpt --model m --steps 5 --out x.jsonl --timeout 9") == \
        repeats["plan_command"]("memplan probe --model m --zero 2 --ckpt") == "--ckpt --model m --zero 2"
    probes = ROOT / "reports" / "probes"
    groups = repeats["repeated"]([probes / "h200-steptime-c.jsonl", probes / "h200-steptime-c2.jsonl"])
    assert len(groups) == 6 and all(len(g["runs"]) == 2 for g in groups)
    assert repeats["repeated"]([probes / "h200-steptime-c.jsonl"]) == []


def test_the_published_repeat_spread_is_the_records_largest():
    """memplan.planning.steptime.REPEAT_SPREAD, which estimate prints beside a step time on a card with terms of
    its own, is the largest max/min of benchmarks/steptime_repeats.py over every record: a new repeat that
    widens it fails here until the constant and docs/benchmarks.md say so."""
    from memplan.planning.steptime import REPEAT_SPREAD

    repeats = runpy.run_path(str(ROOT / "benchmarks" / "steptime_repeats.py"))
    groups = repeats["repeated"](sorted((ROOT / "reports" / "probes").glob("*.jsonl")))
    spreads = [max(s for s, _ in g["runs"]) / min(s for s, _ in g["runs"]) for g in groups]
    assert len(spreads) >= 11 and round(max(spreads), 2) == REPEAT_SPREAD
