"""The caching-allocator replay (memplan.estimate.caching_allocator, memplan.planning.replay), the trace
format (memplan.spec.trace), its conversion from torch's entries (memplan.probe.trace) and `memplan replay`.
CPU only: the traces here are made up, each to exercise one rule of c10/cuda/CUDACachingAllocator.cpp."""

from __future__ import annotations

import gzip
import json

import pytest
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.estimate.caching_allocator import (
    LARGE_BUFFER, SMALL_BUFFER, CachingAllocator, allocation_size, round_size,
)
from memplan.planning.replay import allocator_limit, max_split_bytes_of, replay, reproduces, smallest_limit
from memplan.probe.trace import entries_to_trace
from memplan.spec.cards import VramCap
from memplan.spec.errors import InputError
from memplan.spec.trace import Trace, read_trace, write_trace
from memplan.spec.units import GIB, MIB

runner = CliRunner()


def test_rounding_and_segment_sizes():
    assert round_size(1) == 512 and round_size(513) == 1024 and round_size(4096) == 4096
    assert allocation_size(1000) == SMALL_BUFFER  # small pool: a 2 MiB segment
    assert allocation_size(5 * MIB) == LARGE_BUFFER  # under 10 MiB: a 20 MiB segment
    assert allocation_size(11 * MIB + 1) == 12 * MIB  # else rounded up to 2 MiB


def test_best_fit_splits_the_front_and_merges_on_free():
    allocator = CachingAllocator()
    big = allocator.malloc(30 * MIB)
    allocator.free(big)
    first = allocator.malloc(10 * MIB)  # served from the cached 30 MiB segment, split
    second = allocator.malloc(10 * MIB)
    assert allocator.reserved_bytes == 30 * MIB and allocator.segments == 1
    assert first.address < second.address  # the request takes the front
    allocator.free(first)
    allocator.free(second)  # merges with its free neighbours: one 30 MiB block again
    again = allocator.malloc(30 * MIB)
    assert allocator.reserved_bytes == 30 * MIB and again.size == 30 * MIB


def test_best_fit_takes_the_smallest_block_that_serves():
    allocator = CachingAllocator()
    blocks = [allocator.malloc(size * MIB) for size in (40, 20, 60)]
    for block in blocks:
        allocator.free(block)
    chosen = allocator.malloc(18 * MIB)
    assert chosen.address == blocks[1].address  # the 20 MiB segment, not the first or the largest


def _fragmenting_trace() -> Trace:
    """60 MiB requested and freed; a 10 MiB block lands in its segment and stays; 60 MiB asked again."""
    return Trace(header={"outside_bytes": 0}, kinds="afaa", blocks=[0, 0, 1, 2],
                 sizes=[60 * MIB, 0, 10 * MIB, 60 * MIB], streams=[0, 0, 0, 0])


def test_a_live_block_in_a_freed_segment_runs_the_request_out():
    result = replay(_fragmenting_trace(), limit_bytes=100 * MIB)
    assert not result.fits
    assert result.failure.requested_bytes == 60 * MIB
    assert result.failure.largest_free_block_bytes == 50 * MIB  # 50 MiB free, none of it in one 60 MiB block
    assert result.requests_served == 2
    assert replay(_fragmenting_trace(), limit_bytes=None).peak_reserved_bytes == 120 * MIB


def test_max_split_size_keeps_the_oversize_segment_whole():
    result = replay(_fragmenting_trace(), limit_bytes=100 * MIB, max_split_bytes=40 * MIB)
    assert result.fits  # the 10 MiB request gets its own segment; the 60 MiB block is reused whole
    assert result.peak_reserved_bytes == 70 * MIB  # 10 MiB is not under kMinLargeAlloc: its own 10 MiB segment


def test_release_frees_only_wholly_free_segments():
    allocator = CachingAllocator()
    whole, split = allocator.malloc(30 * MIB), allocator.malloc(30 * MIB)
    allocator.free(whole)
    allocator.free(split)
    kept = allocator.malloc(10 * MIB)  # splits one segment again
    allocator.release_cached_blocks()
    assert allocator.reserved_bytes == 30 * MIB and allocator.segments == 1
    assert kept.allocated


def test_blocks_are_reused_on_their_own_stream_only():
    allocator = CachingAllocator()
    allocator.free(allocator.malloc(30 * MIB, stream=7))
    allocator.malloc(30 * MIB, stream=0)
    assert allocator.reserved_bytes == 60 * MIB


def test_the_small_pool_has_its_own_segments():
    allocator = CachingAllocator()
    allocator.malloc(1000)
    allocator.malloc(2 * MIB)
    assert allocator.reserved_bytes == SMALL_BUFFER + LARGE_BUFFER and allocator.segments == 2


def test_a_release_lets_a_request_past_the_limit_reuse_the_memory():
    # 60 MiB freed whole, then 70 MiB asked under a 100 MiB limit: the cached segment is released first
    trace = Trace(header={}, kinds="afa", blocks=[0, 0, 1], sizes=[60 * MIB, 0, 70 * MIB], streams=[0, 0, 0])
    assert replay(trace, limit_bytes=100 * MIB).fits
    assert not replay(trace, limit_bytes=60 * MIB).fits


def test_smallest_limit_brackets_the_fragmented_trace():
    found = smallest_limit(_fragmenting_trace(), resolution_bytes=MIB)
    assert replay(_fragmenting_trace(), limit_bytes=found).fits
    assert not replay(_fragmenting_trace(), limit_bytes=found - 2 * MIB).fits
    assert 110 * MIB <= found <= 120 * MIB  # 60 + 60, less nothing: the 10 MiB block sits in the first segment


def test_allocator_limit_follows_the_probe_cap():
    trace = Trace(header={"outside_bytes": 3 * GIB, "start_context_bytes": GIB // 2, "process_group": True},
                  kinds="", blocks=[], sizes=[], streams=[])
    card = VramCap(cap_bytes=24 * GIB, card="x", context_bytes=GIB)
    assert allocator_limit(trace, card) == 24 * GIB - GIB - 2 * GIB  # NCCL: outside beyond the larger context
    assert allocator_limit(trace, VramCap(cap_bytes=24 * GIB)) == 21 * GIB  # a GiB cap: the probing card's outside
    alone = Trace(header={"outside_bytes": 3 * GIB}, kinds="", blocks=[], sizes=[], streams=[])
    assert allocator_limit(alone, card) == 23 * GIB  # no process group: no NCCL


def test_reproduction_is_within_one_percent():
    unlimited = replay(_fragmenting_trace(), limit_bytes=None)
    assert reproduces(unlimited, 120 * MIB)
    assert not reproduces(unlimited, 100 * MIB)
    assert reproduces(unlimited, None) is None


def test_max_split_parsing():
    assert max_split_bytes_of("max_split_size_mb:512") == 512 * MIB
    with pytest.raises(InputError, match="above 20"):
        max_split_bytes_of("max_split_size_mb:8")
    with pytest.raises(InputError, match="max_split_size_mb:N"):
        max_split_bytes_of("garbage_collection_threshold:0.6")


def test_entries_to_trace_maps_addresses_to_blocks():
    entries = [
        {"action": "segment_alloc", "addr": 0, "size": 20 * MIB, "stream": 0},
        {"action": "alloc", "addr": 100, "size": 4096, "stream": 0},
        {"action": "alloc", "addr": 200, "size": 8192, "stream": 5},
        {"action": "free_requested", "addr": 100, "size": 4096, "stream": 0},
        {"action": "free_completed", "addr": 100, "size": 4096, "stream": 0},
        {"action": "free_completed", "addr": 999, "size": 4096, "stream": 0},  # allocated before recording
        {"action": "segment_free", "addr": 0, "size": 20 * MIB, "stream": 0},
        {"action": "segment_free", "addr": 40, "size": 20 * MIB, "stream": 0},  # one release, not two
        {"action": "alloc", "addr": 100, "size": 512, "stream": 0},  # the address reused: a new block
        {"action": "oom", "addr": 0, "size": 0, "stream": 0},
    ]
    trace = entries_to_trace(entries, {"run_id": "r"})
    assert trace.kinds == "SaafrDDa"
    assert trace.blocks == [0, 0, 1, 0, 0, 0, 0, 2]
    assert [s for k, s in zip(trace.kinds, trace.sizes) if k in "afr"] == [4096, 8192, 0, 0, 512]
    assert trace.stream_ids == [0, 5] and trace.streams == [0, 0, 1, 0, 0, 0, 0, 0]
    assert trace.addresses[:3] == [0, 100, 200]
    assert trace.header["unmatched_frees"] == 1 and trace.header["trace_ooms"] == 1


def test_trace_file_round_trip(tmp_path):
    path = tmp_path / "t.json.gz"
    write_trace(path, _fragmenting_trace())
    again = read_trace(path)
    assert again.kinds == "afaa" and again.sizes[0] == 60 * MIB


@pytest.mark.parametrize("content, message", [
    (b"not gzip", "not a gzip-compressed JSON trace"),
    (gzip.compress(b'{"schema": "memplan.probe/1"}'), "schema='memplan.probe/1'"),
    (gzip.compress(json.dumps({"schema": "memplan.trace/1", "events": {"kind": "ax", "block": [0, 0], "size": [1, 0],
                                                                      "stream": [0, 0]}}).encode()), "events.kind"),
    (gzip.compress(json.dumps({"schema": "memplan.trace/1", "events": {"kind": "a", "block": [0, 1], "size": [1],
                                                                      "stream": [0]}}).encode()), "different lengths"),
])
def test_bad_trace_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.json.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_trace(path)


def test_cli_replays_a_trace(tmp_path):
    path = tmp_path / "t.json.gz"
    write_trace(path, _fragmenting_trace())
    cap = str(100 / 1024)  # 100 MiB, as GiB
    result = runner.invoke(app, ["replay", str(path), "--card", cap, "--alloc-conf", "default",
                                 "--alloc-conf", "max_split_size_mb:40", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert [row["verdict"] for row in document["rows"]] == ["oom", "fits"]
    assert document["rows"][0]["failure"]["requested_bytes"] == 60 * MIB
    table = runner.invoke(app, ["replay", str(path), "--card", cap, "--alloc-conf", "default", "--alloc-conf",
                                "max_split_size_mb:40"], env={"COLUMNS": "160"})
    assert table.exit_code == 0 and "OOM" in table.output and "FITS" in table.output


@pytest.mark.parametrize("argv, message", [
    (["replay", "/nonexistent/t.json.gz"], "no such file"),
    (["replay", "{trace}", "--card", "rtx-9999"], "--vram-cap=rtx-9999"),
    (["replay", "{trace}", "--alloc-conf", "max_split_size_mb:4"], "above 20"),
])
def test_cli_bad_input_is_one_line(tmp_path, argv, message):
    path = tmp_path / "t.json.gz"
    write_trace(path, _fragmenting_trace())
    result = runner.invoke(app, [arg.replace("{trace}", str(path)) for arg in argv])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_segment_events_are_kept_but_not_replayed():
    trace = Trace(header={}, kinds="SaDfa", blocks=[0, 0, 0, 0, 1], sizes=[60 * MIB, 60 * MIB, 60 * MIB, 0, 60 * MIB],
                  streams=[0] * 5, addresses=[7, 7, 7, 0, 9])
    result = replay(trace, limit_bytes=None)
    assert result.fits and result.peak_reserved_bytes == 60 * MIB  # the D is no release: the segment is reused


def test_replay_b_scores_as_docs_accuracy_says():
    """benchmarks/score_replay.py recomputes the replay-b headline from the committed files."""
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    module = runpy.run_path(str(root / "benchmarks" / "score_replay.py"))
    rows = module["score"](root / "reports/probes/predictions/replay-b-replay.json",
                           root / "reports/probes/h100-replay-b.jsonl",
                           root / "reports/probes/predictions/replay-b.jsonl")
    assert len(rows) == 9
    assert sum(row["replay"] == row["outcome"] for row in rows) == 9
    assert sum(row["estimate"] == row["outcome"] for row in rows) == 4
    assert sum(row["estimate"] == "fits" and row["outcome"] == "oom" for row in rows) == 3


def test_trace_runset_drops_the_cap_and_bundles(tmp_path):
    import runpy
    from pathlib import Path

    from memplan.planning.protocol import load_runset

    root = Path(__file__).resolve().parents[1]
    module = runpy.run_path(str(root / "benchmarks" / "trace_runset.py"))
    runset_path = root / "benchmarks/stacks/runset-replay-b.yaml"
    runset = load_runset(runset_path)
    argv = module["uncapped_argv"](runset, runset.runs[0], runset_path)
    assert "--vram-cap" not in argv and "--steps" in argv
    for name, size in (("a.trace.json.gz", 10), ("b.trace.json.gz", 10), ("a.log", 3)):
        (tmp_path / name).write_bytes(b"x" * size)
    module["bundle_traces"](tmp_path, chunk_bytes=15)
    assert sorted(p.name for p in tmp_path.glob("traces-*.tar")) == ["traces-1.tar", "traces-2.tar"]


def test_recorded_addresses_break_ties_as_the_driver_placed_the_segments():
    # two 60 MiB segments freed; a 30 MiB request takes the lower address: the first segment with rising
    # synthetic addresses, the second where the driver gave it a lower address (replay-a4: falling addresses)
    def chosen(recorded):
        allocator = CachingAllocator(recorded_addresses=recorded)
        first, second = allocator.malloc(60 * MIB), allocator.malloc(60 * MIB)
        allocator.free(first)
        allocator.free(second)
        return "first" if allocator.malloc(30 * MIB).address == first.address else "second"

    assert chosen(None) == "first"
    assert chosen({60 * MIB: [10 * GIB, 9 * GIB]}) == "second"
    beyond = CachingAllocator(recorded_addresses={60 * MIB: [GIB]})
    beyond.malloc(60 * MIB)
    assert beyond.malloc(60 * MIB).address > GIB  # past the recorded ones: rising, above them


def test_replay_uses_the_traces_segment_addresses():
    from memplan.planning.replay import recorded_addresses

    trace = Trace(header={}, kinds="SaSa", blocks=[0, 0, 0, 1], sizes=[60 * MIB, 60 * MIB, 60 * MIB, 60 * MIB],
                  streams=[0] * 4, addresses=[5 * GIB, 5 * GIB, 4 * GIB, 4 * GIB])
    assert recorded_addresses(trace) == {60 * MIB: [5 * GIB, 4 * GIB]}
    assert recorded_addresses(_fragmenting_trace()) is None


def test_a_recorded_address_still_in_use_is_not_given_twice():
    # the traced run freed its first 60 MiB segment and the driver gave the second the same address; in a
    # replay where the first is still live, the second must not land on it
    allocator = CachingAllocator(recorded_addresses={60 * MIB: [GIB, GIB]})
    first, second = allocator.malloc(60 * MIB), allocator.malloc(60 * MIB)
    assert first.address == GIB and second.address != GIB
    assert allocator.segments == 2


@pytest.mark.parametrize("batch, right, estimate_right, scored", [("replay-b", 9, 4, 9), ("replay-d", 11, 4, 11), ("replay-e", 4, 1, 4)])
def test_committed_replay_verdicts_follow_from_the_traces(tmp_path, batch, right, estimate_right, scored):
    """The replay's verdicts of a batch (benchmarks/replay_batch.py, decided on the GPU machine before each capped
    run) are recomputed here from the committed uncapped traces, and score as docs/accuracy.md says."""
    import json
    import runpy
    import tarfile
    from pathlib import Path

    from memplan.planning.replay import allocator_limit, replay
    from memplan.spec.cards import parse_vram_cap
    from memplan.spec.trace import read_trace

    root = Path(__file__).resolve().parents[1]
    decided = json.loads((root / f"reports/probes/predictions/{batch}-replay.json").read_text())
    with tarfile.open(root / f"reports/probes/traces/{batch}-traces.tar") as bundle:
        bundle.extractall(tmp_path, filter="data")
    for entry in decided["runs"]:
        trace = read_trace(tmp_path / f"{entry['name']}.trace.json.gz")
        limit = allocator_limit(trace, parse_vram_cap(entry["vram_cap"]))
        assert limit == entry["limit_bytes"], entry["name"]
        for label, setting in (("default", None), ("max_split_size_mb:512", 512 * MIB)):
            fits = replay(trace, limit_bytes=limit, max_split_bytes=setting).fits
            assert ("fits" if fits else "oom") == entry[label]["verdict"], (entry["name"], label)
    module = runpy.run_path(str(root / "benchmarks" / "score_replay.py"))
    rows = [row for row in module["score"](root / f"reports/probes/predictions/{batch}-replay.json",
                                           root / f"reports/probes/h100-{batch}.jsonl",
                                           root / f"reports/probes/predictions/{batch}.jsonl")
            if row["outcome"] in ("fits", "oom")]
    assert len(rows) == scored
    assert sum(row["replay"] == row["outcome"] for row in rows) == right
    assert sum(row["estimate"] == row["outcome"] for row in rows) == estimate_right


def test_budgeted_skips_what_the_budget_cannot_start():
    import runpy
    from pathlib import Path
    from types import SimpleNamespace

    module = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "trace_runset.py"))
    runs = [SimpleNamespace(name=name) for name in ("a", "b", "c")]
    skipped: list[dict] = []
    kept = [run.name for run, _ in module["budgeted"](runs, only=["a", "c"], budget=None, min_seconds=10, skipped=skipped)]
    assert kept == ["a", "c"] and skipped == []
    kept = list(module["budgeted"](runs, only=None, budget=5, min_seconds=10, skipped=skipped))
    assert kept == [] and [entry["name"] for entry in skipped] == ["a", "b", "c"]
