"""PyTorch's allocator as a plan knob (stack.allocator): expandable segments drop the fragmentation
margin from what a card must hold, not a byte of what is allocated (memplan.estimate.overhead)."""

import json
from pathlib import Path

import pytest

from memplan.estimate import overhead
from memplan.estimate.peak import estimate
from memplan.spec.allocator import allocator_of, conf_with_allocator, record_plan_document
from memplan.spec.flags import plan_from_flags
from memplan.spec.loading import load_calibration, load_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("conf, allocator", [
    (None, "default"), ("", "default"), ("expandable_segments:True", "expandable_segments"),
    ("max_split_size_mb:128, expandable_segments:true", "expandable_segments"),
    ("expandable_segments:False", "default"), ("expandable_segments:True,expandable_segments:False", "default"),
    ("garbage_collection_threshold:0.6", "default"),
])
def test_the_variable_reads_as_the_allocator(conf, allocator):
    assert allocator_of(conf) == allocator


def test_switching_on_keeps_the_users_other_options():
    assert conf_with_allocator(None, "expandable_segments") == "expandable_segments:True"
    assert conf_with_allocator("max_split_size_mb:128", "expandable_segments") == "max_split_size_mb:128,expandable_segments:True"
    assert conf_with_allocator("expandable_segments:False", "expandable_segments") == "expandable_segments:True"
    assert conf_with_allocator("max_split_size_mb:128", "default") == "max_split_size_mb:128"


def _plan(allocator):
    return plan_from_flags(None, gpus=1, gpu="rtx-3090", engine="pytorch", ckpt=True, tiles=7, res=512, objects=1,
                           text_len=7552, allocator=allocator)


def test_expandable_segments_need_the_allocated_peak_and_the_context():
    calibration = load_calibration(None)
    profile = load_profile("sa2va-1b")
    default, expandable = estimate(profile, _plan("default"), calibration), estimate(profile, _plan("expandable_segments"), calibration)
    assert expandable.peak_allocated_bytes == default.peak_allocated_bytes
    assert expandable.device_bytes == default.device_bytes and expandable.peak_reserved_bytes == default.peak_reserved_bytes
    assert expandable.needed_bytes == (expandable.peak_allocated_bytes + overhead.EXPANDABLE_STRANDED_BYTES
                                       + expandable.calibration.context_bytes)
    assert expandable.needed_bytes < default.needed_bytes
    # h200-batch8/cap-1b-pt-7552-t7-r512-o1-ck-xs: the default allocator's margin says oom, the run fitted
    assert default.verdict.value == "oom" and expandable.verdict.value == "fits"
    assert expandable.to_dict()["allocator"] == "expandable_segments" and "allocator" not in default.to_dict()


def test_nccl_still_counts_under_expandable_segments():
    cal = load_calibration(None)
    alone = overhead.needed_bytes(cal, 10 * 2**30, 2**30, device=0, num_gpus=1, expandable=True)
    grouped = overhead.needed_bytes(cal, 10 * 2**30, 2**30, device=0, num_gpus=4, expandable=True)
    assert grouped - alone == cal.nccl_bytes
    assert alone == 10 * 2**30 + overhead.EXPANDABLE_STRANDED_BYTES + cal.context_bytes


def test_the_stranded_constant_is_the_median_the_records_report():
    """EXPANDABLE_STRANDED_BYTES is what the OOM messages of the runs under expandable segments report as
    reserved but unallocated (memplan.probe.run.oom_fragmentation), their median: not a chosen number."""
    import statistics

    from memplan.spec.allocator import EXPANDABLE, allocator_of

    stranded = [record["oom"]["reserved_unallocated_bytes"]
                for path in sorted((ROOT / "reports" / "probes").glob("h200-batch*.jsonl"))
                for record in map(json.loads, path.read_text().splitlines())
                if record["status"] == "oom" and allocator_of(record["environment"].get("alloc_conf")) == EXPANDABLE]
    assert len(stranded) >= 4
    assert overhead.EXPANDABLE_STRANDED_BYTES == int(statistics.median(stranded))


def test_records_before_the_field_read_the_allocator_from_their_environment():
    lines = (ROOT / "reports" / "probes" / "h200-batch8.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert "allocator" not in record["plan"]["stack"]
    assert record_plan_document(record)["stack"]["allocator"] == "expandable_segments"
    assert "allocator" not in record["plan"]["stack"]  # the record itself is not rewritten
    plain = json.loads((ROOT / "reports" / "probes" / "h200-batch7.jsonl").read_text().splitlines()[0])
    assert record_plan_document(plain) == plain["plan"]
    explicit = {**record, "plan": {**record["plan"], "stack": {**record["plan"]["stack"], "allocator": "default"}}}
    assert record_plan_document(explicit)["stack"]["allocator"] == "default"


def test_a_planned_runs_alloc_conf_is_its_plans_allocator(tmp_path):
    from memplan.cli.protocol_cmd import planned_plan
    from memplan.planning.protocol import load_runset

    path = ROOT / "reports" / "probes" / "runsets" / "h200-batch8.yaml"
    runset = load_runset(path)
    assert all(planned_plan(runset, run, path).stack.allocator == "expandable_segments" for run in runset.runs)
    path7 = ROOT / "reports" / "probes" / "runsets" / "h200-batch7.yaml"
    runset7 = load_runset(path7)
    assert all(planned_plan(runset7, run, path7).stack.allocator == "default" for run in runset7.runs)


def test_the_probe_sets_the_variable_the_plan_asks_for(monkeypatch):
    from memplan.probe.environment import apply_allocator

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "")  # recorded, so that teardown removes what the probe sets
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    plan = _plan("expandable_segments")
    assert apply_allocator(plan) is plan
    import os

    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_the_probe_records_the_allocator_its_environment_sets(monkeypatch):
    from memplan.probe.environment import apply_allocator

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert apply_allocator(_plan("default")).stack.allocator == "expandable_segments"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    assert apply_allocator(_plan("default")).stack.allocator == "default"


def test_advice_offers_expandable_segments_and_ranks_clear_fits_first():
    from memplan.planning.advice import advise

    calibration = load_calibration(None)
    profile = load_profile("sa2va-1b")
    plan = _plan("default")
    advice = advise(profile, plan, calibration)
    labels = [change.label for change in advice.changes]
    assert any(label.startswith("expandable segments") for label in labels)
    switched = next(c for c in advice.changes if c.label.startswith("expandable segments"))
    assert switched.plan.stack.allocator == "expandable_segments" and switched.estimate.fits
    assert not any(c.label.startswith("expandable segments")
                   for c in advise(profile, _plan("expandable_segments"), calibration).changes)


def test_the_fragmentation_sink_is_named_where_it_decides():
    from memplan.planning.sinks import find_sinks

    calibration = load_calibration(None)
    profile = load_profile("sa2va-1b")
    near = find_sinks(profile, _plan("default"), calibration=calibration)
    sink = next(s for s in near if s.knob == "stack.allocator=expandable_segments")
    default, expandable = (estimate(profile, _plan(a), calibration) for a in ("default", "expandable_segments"))
    assert sink.saved_bytes == default.needed_bytes - expandable.needed_bytes > 0
    assert "expandable_segments:True" in sink.change
    roomy = plan_from_flags(None, gpus=1, gpu="h200", engine="pytorch", ckpt=True, tiles=7, res=512, text_len=2048)
    assert not any(s.knob.startswith("stack.allocator") for s in find_sinks(profile, roomy, calibration=calibration))
    assert not any(s.knob.startswith("stack.allocator")
                   for s in find_sinks(profile, _plan("expandable_segments"), calibration=calibration))


def test_the_table_names_the_allocator_row_and_legend_for_expandable_segments():
    from memplan.report import story

    calibration = load_calibration(None)
    result = estimate(load_profile("sa2va-1b"), _plan("expandable_segments"), calibration)
    rows = dict(story.overhead_rows(result))
    assert rows["allocator (stranded pages, expandable segments)"] == overhead.EXPANDABLE_STRANDED_BYTES
    constant = rows.pop("fitted constant (workspaces)", 0)
    assert sum(rows.values()) + result.peak_allocated_bytes == result.needed_bytes and constant >= 0
    assert "expandable segments" in story.legend(result)


def test_launch_lines_export_the_allocator_the_plan_names():
    from memplan.integrations.accelerate_fsdp import launch_line
    from memplan.integrations.deepspeed import launch_command

    expandable = plan_from_flags(None, gpus=4, zero=2, allocator="expandable_segments")
    default = plan_from_flags(None, gpus=4, zero=2)
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in launch_command(expandable, "train.py")
    assert "PYTORCH_CUDA_ALLOC_CONF" not in launch_command(default, "train.py")
    fsdp = plan_from_flags(None, gpus=4, engine="fsdp2", allocator="expandable_segments")
    assert launch_line(fsdp, "fsdp.yaml", "train.py").startswith("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True accelerate launch")
    assert launch_line(plan_from_flags(None, gpus=4, engine="fsdp2"), "fsdp.yaml", "train.py").startswith("accelerate launch")


def test_compare_and_search_take_the_allocator():
    from typer.testing import CliRunner

    from memplan.cli.main import app

    runner = CliRunner()
    default = runner.invoke(app, ["compare", "--gpu", "rtx-3090", "--format", "json"])
    expandable = runner.invoke(app, ["compare", "--gpu", "rtx-3090", "--format", "json", "--allocator", "expandable_segments"])
    assert default.exit_code == 0 and expandable.exit_code == 0, expandable.output
    needs = lambda out: [row["needed_bytes"] for row in json.loads(out)["plans"]]
    assert all(e <= d for e, d in zip(needs(expandable.output), needs(default.output)))
    assert needs(expandable.output) != needs(default.output)
    bad = runner.invoke(app, ["search", "--gpus", "4", "--gpu", "rtx-3090", "--allocator", "nope"])
    assert bad.exit_code == 2 and "stack.allocator='nope'" in bad.output


@pytest.mark.parametrize("line, allocator", [
    ('os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"', "expandable_segments"),
    ('os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128,expandable_segments:True")', "expandable_segments"),
    ('torch.cuda.memory._set_allocator_settings("expandable_segments:True")', "expandable_segments"),
    ('os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "max_split_size_mb:128"', "default"),
])
def test_scan_reads_the_allocator_a_script_sets(line, allocator):
    from memplan.integrations.script_scan import scan_source

    found = [f for f in scan_source(source=f"import os\nimport torch\n{line}\n").findings
             if f.name == "PYTORCH_CUDA_ALLOC_CONF"]
    assert len(found) == 1 and dict(found[0].settings) == {"stack.allocator": allocator} and found[0].line == 3


def test_scan_says_when_it_cannot_read_the_allocator():
    from memplan.integrations.script_scan import NOT_LITERAL, scan_source

    found = [f for f in scan_source(source='import os\nos.environ["PYTORCH_CUDA_ALLOC_CONF"] = conf()\n').findings
             if f.name == "PYTORCH_CUDA_ALLOC_CONF"]
    assert len(found) == 1 and not found[0].settings and NOT_LITERAL in found[0].note


def test_calibration_fits_the_default_allocator_only():
    """The pressure and reserved terms model the default allocator: records under expandable segments
    (h200-batch8, -9) change no fitted term."""
    from memplan.probe import calibrate as cal

    probes = ROOT / "reports" / "probes"
    base = cal.load_measurements([probes / "h200-steptime-c.jsonl", probes / "h200-batch6.jsonl"])
    extra = cal.load_measurements([probes / "h200-batch8.jsonl", probes / "h200-batch9.jsonl"])
    assert extra and all(m.plan.stack.allocator == "expandable_segments" for m in extra)
    assert cal.default_allocator(base + extra) == base
    plain = cal.fit(base, ["x"])
    assert cal.fit(base + extra, ["x"]) == plain
    assert cal.fit_reserved(base + extra) == cal.fit_reserved(base)
