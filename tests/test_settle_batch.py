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


def test_run_decides_each_plan_from_its_settle_traces_before_running_it(tmp_path, monkeypatch, capsys):
    """`settle_batch.py run` with the capped runs faked by traces of a tiny eager step: both settle runs, then the
    replay's verdict written to settle.json, and only then the plan's own run; a plan whose settle run runs out
    is not run."""
    import importlib
    import sys

    import yaml

    from memplan.probe.records import SCHEMA
    from memplan.spec.trace import write_trace
    from test_trace_family import _trace

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    batch = importlib.import_module("settle_batch")
    order = []

    def capped_traced(runset, run, runset_path, out_dir, timeout_s):
        tokens = run.flags["text_len"]
        status = "oom" if run.name in ("bad-b", "good") else "ok"  # good: 6 x 20,000^2 bytes of scores > 2 GiB
        order.append((run.name, json.loads((out_dir / "settle.json").read_text()) if (out_dir / "settle.json").exists()
                      else None))
        trace = out_dir / f"{run.name}.capped.trace.json.gz"
        write_trace(trace, _trace(tokens, eager=True))
        record = {"schema": SCHEMA, "run_id": run.name, "run_key": runset.key(run), "status": status}
        with open(out_dir / "records.jsonl", "a") as out:
            out.write(json.dumps(record) + "\n")
        return record, trace, 1.0, 0

    monkeypatch.setattr(batch, "capped_traced", capped_traced)
    runs = []
    for name, plan_tokens in (("good", 20000), ("bad", 4000)):
        runs += [{"name": f"{name}-a", "flags": {"text_len": 1000}, "vram_cap": 2},
                 {"name": f"{name}-b", "flags": {"text_len": 2000}, "vram_cap": 2},
                 {"name": name, "flags": {"text_len": plan_tokens}, "vram_cap": 2}]
    runset = tmp_path / "runset.yaml"
    runset.write_text(yaml.safe_dump({"schema": "memplan.runset/1", "batch": "t", "card": "h100-sxm", "runs": runs}))
    out_dir = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["settle_batch.py", "run", str(runset), "--out-dir", str(out_dir)])
    batch.main()
    decided = {entry["name"]: entry for entry in json.loads((out_dir / "settle.json").read_text())["runs"]}
    assert decided["good"]["verdict"] == "oom" and len(decided["good"]["trace_sha256"]) == 2  # 6 x 20,000^2 > 2 GiB
    assert decided["bad"]["verdict"] is None and decided["bad"]["trace_status"] == ["ok", "oom"]
    names = [name for name, _ in order]
    assert names == ["good-a", "good-b", "good", "bad-a", "bad-b"]  # the failed recipe's plan is not run
    before_plan = dict(order)["good"]
    assert before_plan["runs"][0]["verdict"] == "oom"  # written before the plan's run started
    assert "replay: 1 of 1 right" in capsys.readouterr().out
