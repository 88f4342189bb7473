"""What an OOM record keeps of the allocator's state at the failing request (memplan.probe.run):
the step it failed in, and PyTorch's own split of the held memory into allocated and reserved-but-
unallocated (the fragmentation release_cached_blocks could not give back)."""

import json
from pathlib import Path

from memplan.planning.protocol import PlannedRun
from memplan.probe.run import oom_fragmentation, requested_bytes

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = ("CUDA out of memory. Tried to allocate 3.94 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
           "119.21 GiB is free. Including non-PyTorch memory, this process has 20.58 GiB memory in use. 22.95 GiB "
           "allowed; Of the allocated memory 15.66 GiB is allocated by PyTorch, and 4.18 GiB is reserved by PyTorch "
           "but unallocated. If reserved but unallocated memory is large try setting "
           "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")


def test_the_message_splits_held_memory():
    assert requested_bytes(MESSAGE) == round(3.94 * 2**30)
    assert oom_fragmentation(MESSAGE) == {"allocated_bytes": round(15.66 * 2**30),
                                          "reserved_unallocated_bytes": round(4.18 * 2**30)}
    assert oom_fragmentation("CUDA out of memory. Tried to allocate 2.00 MiB") == {}
    assert oom_fragmentation(MESSAGE.replace("4.18 GiB", "512.00 MiB"))["reserved_unallocated_bytes"] == 512 * 2**20


def test_every_recorded_h200_sa2va_oom_parses():
    """The H200 capped runs' OOM messages (reports/probes) all carry the split: the analysis in
    docs/accuracy.md reads them with this function."""
    found = 0
    for path in sorted((ROOT / "reports" / "probes").glob("h200-batch*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["status"] == "oom":
                parsed = oom_fragmentation(record["ranks"][0]["error"])
                assert parsed["reserved_unallocated_bytes"] > 0 and parsed["allocated_bytes"] > 0, path.name
                found += 1
    assert found >= 13


def test_a_planned_run_may_set_the_allocator():
    run = PlannedRun(name="x", model="sa2va-1b", alloc_conf="expandable_segments:True")
    assert run.alloc_conf == "expandable_segments:True"
    assert PlannedRun(name="y").alloc_conf is None


def test_the_runner_sets_the_allocator_and_the_record_says_so(tmp_path):
    """benchmarks/run_runset.py on the CPU: a run with alloc_conf gets PYTORCH_CUDA_ALLOC_CONF, and the
    probe's record stores it (environment.alloc_conf); the run sets waiting for a GPU all load."""
    import subprocess
    import sys

    import yaml

    from memplan.planning.protocol import load_runset

    for name in ("h200-batch7.yaml", "h200-batch8.yaml"):
        runset = load_runset(ROOT / "reports" / "probes" / "runsets" / name)
        assert len(runset.runs) >= 9
    assert all(run.alloc_conf == "expandable_segments:True"
               for run in load_runset(ROOT / "reports" / "probes" / "runsets" / "h200-batch8.yaml").runs)
    document = yaml.safe_load((ROOT / "tests" / "fixtures" / "runsets" / "tiny.yaml").read_text())
    document["batch"] = "tiny-xs"
    document["runs"] = [{**document["runs"][0], "name": "tiny-xs", "alloc_conf": "expandable_segments:True"}]
    runset = tmp_path / "tiny-xs.yaml"
    runset.write_text(yaml.safe_dump(document))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_runset.py"), str(runset), "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads(out.read_text().splitlines()[0])
    assert record["status"] == "ok" and record["environment"]["alloc_conf"] == "expandable_segments:True"


def _segment(total, *blocks):
    return {"total_size": total, "blocks": [{"size": size, "state": state} for size, state in blocks]}


def test_the_layout_names_the_largest_free_block_and_what_split_the_big_segments():
    """summarize_segments (memplan.probe.layout) on a made-up snapshot: a 4 GiB segment split by two live
    blocks, a wholly free one, a small live one. Free bytes count as stranded only in live segments."""
    from memplan.probe.layout import summarize_segments

    g = 2**30
    segments = [_segment(4 * g, (g // 4, "active_allocated"), (3 * g // 2, "inactive"), (g // 4, "active_allocated"),
                         (2 * g, "inactive")),
                _segment(3 * g, (3 * g, "inactive")),
                _segment(2**21, (2**20, "active_allocated"), (2**20, "inactive"))]
    summary = summarize_segments(segments, requested=int(3.5 * g))
    assert summary["segments"] == 3 and summary["reserved_bytes"] == 7 * g + 2**21
    assert summary["allocated_bytes"] == g // 2 + 2**20
    assert summary["free_in_live_segments_bytes"] == 3 * g // 2 + 2 * g + 2**20  # not the wholly free 3 GiB
    assert summary["largest_free_block_bytes"] == 3 * g
    assert summary["large_segments"] == [{"size_bytes": 4 * g, "live_bytes": g // 2, "largest_free_bytes": 2 * g,
                                          "live_blocks_bytes": [g // 4, g // 4]}]
    assert len(summarize_segments(segments, requested=None)["large_segments"]) == 3


def test_no_layout_without_cuda():
    """On the CPU stand-in there is no allocator to read: the record gets no layout, not an error."""
    import torch

    from memplan.probe.layout import layout_at_failure

    if not torch.cuda.is_available():
        from memplan.probe.layout import watch_out_of_memory

        assert layout_at_failure(2**30) == {}
        assert watch_out_of_memory() is False  # no observer to attach without CUDA


def test_the_layout_report_shows_what_split_the_segments(tmp_path):
    """benchmarks/oom_layout.py prints an OOM record's layout and counts the records without one."""
    import runpy

    report = runpy.run_path(str(ROOT / "benchmarks" / "oom_layout.py"))
    g = 2**30
    record = {"run_id": "r1", "run_key": "layout-a/lay-a", "status": "oom",
              "oom": {"phase": "backward", "step": 2, "requested_bytes": 4 * g,
                      "layout": {"segments": 9, "reserved_bytes": 20 * g, "allocated_bytes": 16 * g,
                                 "free_in_live_segments_bytes": 4 * g, "largest_free_block_bytes": 3 * g,
                                 "large_segments": [{"size_bytes": 4 * g, "live_bytes": g // 2, "largest_free_bytes": 3 * g,
                                                     "live_blocks_bytes": [g // 4, g // 8]}]}}}
    lines = report["describe"](record)
    assert lines[0].startswith("layout-a/lay-a: backward step 2, requested 4.00 GiB")
    assert "largest free block 3.00" in lines[0] and "live 0.50 (largest live blocks 0.25, 0.12)" in lines[1]


def test_the_observers_layout_is_the_one_filed_once():
    """An observed failure's layout is handed to the record once and labelled as taken at the request; the
    next failure without an observation does not reuse it."""
    from memplan.probe import layout

    observed = {"segments": 1, "when": "at the request", "observed_request_bytes": 2**30}
    layout._AT_REQUEST.update(observed)
    assert layout.layout_at_failure(int(1.004 * 2**30)) == observed  # the message rounds the size
    assert layout._AT_REQUEST == {}
    layout._AT_REQUEST.update(observed)  # a caught and survived failure, then another of 2 GiB
    taken = layout.layout_at_failure(2**31)
    assert taken.get("when") != "at the request" and layout._AT_REQUEST == {}


def test_an_oom_is_called_fragmentation_only_when_the_free_bytes_would_have_held_the_request():
    """memplan.probe.layout.fragmented on h100-layout-b's two misses: the Sa2VA harness had 4.18 GiB free in live
    segments for a 3.94 GiB request (fragmentation); the custom loop 2.93 GiB for 3.70 GiB (short of bytes too)."""
    from memplan.probe.layout import fragmented
    from memplan.probe.records import read_records

    records = {r["run_key"]: r for r in read_records(ROOT / "reports" / "probes" / "h100-layout-b.jsonl")}
    a, b = records["layout-b/lb-a"]["oom"], records["layout-b/lb-b"]["oom"]
    assert fragmented(a["layout"], a["requested_bytes"]) and not fragmented(b["layout"], b["requested_bytes"])
    assert not fragmented({}, 2**30) and not fragmented(a["layout"], None)


def test_the_probe_line_names_the_layout(tmp_path):
    """memplan probe's outcome line for an OOM record with a layout: the stranded bytes, the largest free block,
    and the fragmentation hint where it applies."""
    from memplan.cli import probe as probe_cli
    from memplan.probe.records import read_records

    record = next(r for r in read_records(ROOT / "reports" / "probes" / "h100-layout-b.jsonl")
                  if r["run_key"] == "layout-b/lb-a")
    import io

    from rich.console import Console

    buffer = io.StringIO()
    original = probe_cli.console
    probe_cli.console = lambda: Console(file=buffer, width=400)
    try:
        probe_cli.render_result(record, tmp_path / "r.jsonl")
    finally:
        probe_cli.console = original
    text = buffer.getvalue()
    assert "OOM in backward on rank 0, tried to allocate 3.94 GiB; 4.18 GiB sat free in segments holding live blocks" in text
    assert "the largest free block 2.42 GiB (at the request); fragmentation, not capacity" in text


def test_allocator_options_the_estimate_does_not_model_take_a_run_out_of_the_verdicts():
    """memplan.spec.allocator.unmodelled_options, and what reads it: a capped run under max_split_size_mb
    (h100-layout-b, kept in logs/) is neither a verdict to score nor a run to fit the default allocator on."""
    from memplan.planning.scoring import score_run
    from memplan.probe.calibrate import default_allocator, measured_from_record
    from memplan.probe.records import read_records
    from memplan.spec.allocator import unmodelled_options

    assert unmodelled_options(None) == () == unmodelled_options("expandable_segments:True")
    assert unmodelled_options("max_split_size_mb:512,expandable_segments:False") == ("max_split_size_mb",)
    assert unmodelled_options("garbage_collection_threshold:0.6, max_split_size_mb:128") == (
        "garbage_collection_threshold", "max_split_size_mb")
    path = ROOT / "reports" / "probes" / "logs" / "h100-layout-b-split512.jsonl"
    records = read_records(path)
    measured = [measured_from_record(record, str(path)) for record in records]
    assert all(m.alloc_options == ("max_split_size_mb",) and m.vram_cap_bytes for m in measured)
    assert default_allocator(measured) == []
    prediction = {"run_key": records[0]["run_key"], "model": "sa2va-1b", "vram_cap": "rtx-3090",
                  "capacity_bytes": records[0]["vram_cap_bytes"],
                  "predicted": {"verdict": "fits", "needed_bytes": 1, "peak_allocated_bytes": 1}}
    scored = score_run(prediction, records[0])
    assert scored.measured_verdict is None and scored.verdict_right is None
    plain = dict(records[0], environment={**records[0]["environment"], "alloc_conf": None})
    assert score_run(prediction, plain).verdict_right is True
