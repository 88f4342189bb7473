"""benchmarks/settle_batch.py: the committed settle-a run set is what its pre-registration says (each TIGHT plan
with its two settle traces, predicted clear fits), and its replay step reads the verdict `memplan replay` prints."""

import json
import runpy
from pathlib import Path

from memplan.planning.protocol import PlannedRun, load_runset, read_predictions
from test_trace_family import _written

ROOT = Path(__file__).resolve().parents[1]
BATCH = runpy.run_path(str(ROOT / "benchmarks" / "settle_batch.py"))


def test_every_plan_has_its_two_settle_runs_predicted_clear_and_itself_tight():
    runset = load_runset(ROOT / "benchmarks" / "stacks" / "runset-settle-a.yaml")
    plans = BATCH["plans"](runset)
    assert len(plans) == 6 and 3 * len(plans) == len(runset.runs)
    predicted = {line["name"]: line["predicted"] for line in read_predictions(ROOT / "reports" / "probes" /
                                                                                "predictions" / "settle-a.jsonl")}
    for plan_run, run_a, run_b in plans:
        assert run_a.flags["text_len"] < run_b.flags["text_len"] < plan_run.flags["text_len"]
        assert {k: v for k, v in run_a.flags.items() if k != "text_len"} == \
               {k: v for k, v in plan_run.flags.items() if k != "text_len"}
        assert predicted[plan_run.name]["tight"] is True
        for settle_run in (run_a, run_b):
            assert predicted[settle_run.name]["verdict"] == "fits" and predicted[settle_run.name]["tight"] is False


def test_the_replay_step_reads_the_cli_verdict(tmp_path):
    traces = [Path(p) for p in _written(tmp_path)]

    def verdict(tokens):
        run = PlannedRun(name="p", flags={"text_len": tokens}, vram_cap=2)
        return BATCH["replay_verdict"](run, traces)

    fits, runs_out = verdict(4000), verdict(20000)  # 6 x 20,000^2 bytes of eager scores cannot fit 2 GiB
    assert fits["verdict"] == "fits" and runs_out["verdict"] == "oom", (fits.get("error"), runs_out.get("error"))
    assert fits["limit_bytes"] == runs_out["limit_bytes"] > 0
    json.dumps(fits)  # what settle.json keeps
