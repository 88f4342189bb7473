"""memplan.planning.trace_family: a plan's trace at a length it was not run at, from traces at others."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.planning.replay import Replay, replay
from memplan.planning.trace_family import (
    LengthScan, align, ladder, laws, scan_lengths, size_at, synthesize, trace_tokens,
)
from memplan.spec.errors import InputError
from memplan.spec.trace import Trace, read_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]


def _trace(tokens: int, *, eager: bool = False, run_id: str | None = None, free_order=(1, 2)) -> Trace:
    """A tiny step: weights (constant), two activations (proportional), eager scores (quadratic), a
    linear-plus-constant buffer; the two activations freed together (in ``free_order``)."""
    sizes = [1 << 20, 4096 * tokens, 2048 * tokens, 6 * tokens * tokens if eager else 64, 512 + 3 * tokens]
    kinds, blocks, out_sizes = "", [], []
    for block, size in enumerate(sizes):
        kinds += "a"
        blocks.append(block)
        out_sizes.append(size)
    for block in (4, 3, *free_order):
        kinds += "f"
        blocks.append(block)
        out_sizes.append(0)
    header = {"run_id": run_id or f"run-{tokens}", "model": "qwen2.5-0.5b",
              "plan": {"name": "p", "inputs": {"text_tokens": tokens, "tiles": 0}, "hardware": {"num_gpus": 1}}}
    return Trace(header=header, kinds=kinds, blocks=blocks, sizes=out_sizes, streams=[0] * len(kinds))


def test_size_laws_from_two_lengths():
    assert size_at([(100, 7), (200, 7)], 300) == 7
    assert size_at([(100, 400), (200, 800)], 150) == 600
    assert size_at([(100, 60_000), (200, 240_000)], 300) == 540_000  # the square of the length
    assert size_at([(100, 812), (200, 1112)], 300) == 1412  # a constant plus 3 bytes per token
    assert size_at([(100, 10), (200, 40), (300, 90)], 400) == 160  # three lengths: the quadratic through them


def test_synthesize_follows_each_requests_law():
    family = align([_trace(1000, eager=True), _trace(2000, eager=True)])
    synthesized = synthesize(family, tokens=3000)
    assert synthesized.sizes[:5] == _trace(3000, eager=True).sizes[:5]
    assert trace_tokens(synthesized) == 3000 and synthesized.addresses is None
    assert laws(family) == {"constant": 1, "proportional": 2, "quadratic": 1, "polynomial": 1}


def test_frees_with_nothing_between_may_come_in_another_order():
    family = align([_trace(1000), _trace(2000, free_order=(2, 1))])
    assert family.tokens == (1000, 2000)


@pytest.mark.parametrize("second, message", [
    (_trace(1000), "different sequence lengths"),
    (Trace(header=_trace(2000).header, kinds="a", blocks=[0], sizes=[1], streams=[0]), "its requests differ"),
    (_trace(2000, free_order=(0, 1)), "frees another request"),
])
def test_traces_that_are_not_one_plans_step_are_refused(second, message):
    with pytest.raises(InputError, match=message):
        align([_trace(1000), second])


def test_another_plan_is_refused():
    other = _trace(2000)
    other.header["model"] = "qwen2.5-3b"
    with pytest.raises(InputError, match="another model or plan"):
        align([_trace(1000), other])


def test_a_recorded_length_is_synthesized_to_the_byte_from_two_others(tmp_path):
    """Retrospective (the three runs' outcomes were known): the custom-loop Qwen2.5-3B LoRA plan traced at 6,528 and
    6,912 tokens (replay-a4) gives its trace at 6,720 (replay-b) request for request, every size exact."""
    for bundle, member in (("replay-a4", "ra-l-lora-q3-6528"), ("replay-a4", "ra-l-lora-q3-6912"),
                           ("replay-b", "rb-l-lora-q3-6720")):
        with tarfile.open(ROOT / f"reports/probes/traces/{bundle}-traces.tar") as tar:
            tar.extract(f"{member}.trace.json.gz", tmp_path, filter="data")
    low, high, middle = (read_trace(tmp_path / f"{name}.trace.json.gz")
                         for name in ("ra-l-lora-q3-6528", "ra-l-lora-q3-6912", "rb-l-lora-q3-6720"))
    synthesized = synthesize(align([low, high]), tokens=6720)
    recorded = [(k, s) for k, s in zip(middle.kinds, middle.sizes) if k == "a"]
    assert [(k, s) for k, s in zip(synthesized.kinds, synthesized.sizes) if k == "a"] == recorded


def _written(tmp_path) -> list[str]:
    """The eager tiny step's traces at 1,000 and 2,000 tokens, written; their paths."""
    paths = []
    for tokens in (1000, 2000):
        path = tmp_path / f"t{tokens}.json.gz"
        write_trace(path, _trace(tokens, eager=True))
        paths.append(str(path))
    return paths


def test_cli_replays_a_synthesized_length(tmp_path):
    paths = _written(tmp_path)
    fits = CliRunner().invoke(app, ["replay", *paths, "--text-len", "4000", "--card", "2", "--no-smallest"])
    assert fits.exit_code == 0, fits.output
    assert "synthesized at 4000 tokens (beyond the traced 1000, 2000)" in fits.output and "FITS" in fits.output
    # 6 x 20,000^2 bytes of eager scores (2.2 GiB) cannot fit a 2 GiB card
    runs_out = CliRunner().invoke(app, ["replay", *paths, "--text-len", "20000", "--card", "2", "--no-smallest"])
    assert runs_out.exit_code == 0 and "OOM" in runs_out.output and "FITS" not in runs_out.output


@pytest.mark.parametrize("argv, message", [
    (["--text-len", "4000"], "needs two or more traces"),
    (["SECOND"], "without --text-len"),
    (["SECOND", "--text-len", "0"], "--text-len=0"),
])
def test_cli_bad_family_input_is_one_line(tmp_path, argv, message):
    first, second = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    write_trace(first, _trace(1000))
    write_trace(second, _trace(2000))
    argv = [str(second) if arg == "SECOND" else arg for arg in argv]
    result = CliRunner().invoke(app, ["replay", str(first), *argv, "--no-smallest"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def _family(*lengths: int):
    return align([_trace(tokens, eager=True) for tokens in lengths])


def test_scan_finds_the_longest_length_each_rung_replayed():
    """Eager scores (6 n^2 bytes) outgrow a 2 GiB limit near 18,900 tokens: the scan's longest rung fits and the next
    runs out, each checked by its own replay; it stops BEYOND rungs past the first OOM."""
    family, limit = _family(1000, 2000), 2 * 1024**3
    lengths = ladder(start=1000, stop=40_000, step=500)
    scan = scan_lengths(family, lengths, limit_bytes=limit, beyond=3)
    assert 15_000 < scan.longest < 20_000 and scan.first_oom == scan.longest + 500 and scan.fits_again == ()
    assert replay(synthesize(family, tokens=scan.longest), limit_bytes=limit).fits
    assert not replay(synthesize(family, tokens=scan.first_oom), limit_bytes=limit).fits
    assert scan.rows[-1][0] == scan.first_oom + 3 * 500  # three rungs past the first OOM, then stop
    assert scan_lengths(family, lengths[:4], limit_bytes=limit).first_oom is None  # every rung fits


def test_a_fit_above_the_first_oom_is_reported_not_trusted():
    def rung(fits: bool) -> Replay:
        return Replay(limit_bytes=1, max_split_bytes=None, fits=fits, peak_reserved_bytes=1, peak_allocated_bytes=1,
                      requests_served=1, failure=None)

    scan = LengthScan(limit_bytes=1, max_split_bytes=None,
                      rows=tuple((n, rung(fits)) for n, fits in ((100, True), (200, True), (300, False), (400, True),
                                                                  (500, False))))
    assert (scan.longest, scan.first_oom, scan.fits_again) == (200, 300, (400,))
    first_runs_out = LengthScan(limit_bytes=1, max_split_bytes=None, rows=((100, rung(False)), (200, rung(True))))
    assert (first_runs_out.longest, first_runs_out.first_oom) == (None, 100)


def test_cli_longest_sequence_per_card(tmp_path):
    paths = _written(tmp_path)
    argv = ["replay", *paths, "--longest", "--card", "2", "--alloc-conf", "default", "--step", "500", "--to", "30000"]
    result = CliRunner().invoke(app, argv + ["--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)["rows"][0]
    scan = scan_lengths(_family(1000, 2000), ladder(start=1000, stop=30_000, step=500), limit_bytes=2 * 1024**3)
    assert (row["longest_tokens"], row["first_oom_tokens"]) == (scan.longest, scan.first_oom)
    table = CliRunner().invoke(app, argv)
    assert table.exit_code == 0 and f"{scan.longest:,}" in table.output and "extrapolated" in table.output


@pytest.mark.parametrize("argv, message", [
    (["--longest"], "needs two or more traces"),
    (["SECOND", "--longest", "--text-len", "3000"], "not both"),
    (["SECOND", "--longest", "--step", "0"], "--step=0"),
    (["SECOND", "--longest", "--from", "5000", "--to", "4000"], "--from=5000 --to=4000"),
])
def test_cli_bad_longest_input_is_one_line(tmp_path, argv, message):
    first, second = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    write_trace(first, _trace(1000))
    write_trace(second, _trace(2000))
    argv = [str(second) if arg == "SECOND" else arg for arg in argv]
    result = CliRunner().invoke(app, ["replay", str(first), *argv, "--card", "2"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
