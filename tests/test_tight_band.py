"""The tight band (Calibration.tight_band): a verdict within the share of the card where pre-registered
verdicts have gone either way says so, advice runs for it, and the shipped band is the one the history
gives (benchmarks/rescore.py tight_band), not a number typed in."""

import json
import runpy
from dataclasses import replace
from pathlib import Path

from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.cli.names import resolve_profile
from memplan.estimate.peak import estimate
from memplan.planning.advice import advise
from memplan.report.render import verdict_text
from memplan.spec.flags import plan_from_flags
from memplan.spec.loading import load_calibration

ROOT = Path(__file__).resolve().parents[1]


def _estimate(vram: float):
    plan = plan_from_flags(None, gpus=4, vram=vram, res=512, host_ram=256)
    calibration = load_calibration()
    return resolve_profile(None, plan), plan, calibration, estimate(resolve_profile(None, plan), plan, calibration)


def _at(result, share: float):
    """The same estimate on a card whose VRAM puts needed at ``share`` of it."""
    return replace(result, vram_bytes=int(result.needed_bytes / share))


def test_tight_within_the_band_either_side_and_clear_outside():
    *_, result = _estimate(80)
    band = result.calibration.tight_band
    assert band > 0
    assert _at(result, 1 - band / 2).tight and _at(result, 1 + band / 2).tight
    assert not _at(result, 1 - 2 * band).tight and not _at(result, 1 + 2 * band).tight
    assert _at(result, 1 - band / 2).fits and not _at(result, 1 - band / 2).clear_fit
    assert _at(result, 1 - 2 * band).clear_fit


def test_the_verdict_line_and_json_say_tight():
    *_, result = _estimate(80)
    tight = _at(result, 0.99)
    assert "TIGHT" in verdict_text(tight) and "TIGHT" not in verdict_text(_at(result, 0.5))
    assert "memplan probe" in verdict_text(tight) and "memplan replay" in verdict_text(tight)  # probe, or trace + replay
    assert tight.to_dict()["tight"] is True and tight.to_dict()["tight_band"] == result.calibration.tight_band


def test_advice_runs_for_a_tight_fit_and_ranks_clear_fits_first():
    profile, plan, calibration, result = _estimate(24)
    tight = _at(result, 0.98)
    assert tight.fits and tight.tight
    advice = advise(profile, plan, calibration, result=tight)
    assert advice.changes, "a tight fit gets the changes that clear the band"
    assert any("tight" in line for line in advice.diagnosis)
    ranked = advice.by_sacrifice()
    flags = [c.estimate.tight for c in ranked]
    assert flags == sorted(flags)  # clear fits (False) first
    assert not advise(profile, plan, calibration, result=_at(result, 0.5)).changes


def test_the_shipped_band_is_the_widest_pre_registered_miss():
    rescore = runpy.run_path(str(ROOT / "benchmarks" / "rescore.py"))
    misses = rescore["verdict_misses"]("default")
    assert len(misses) >= 13
    widest = max(abs(run.needed_over_capacity - 1) for _, run in misses)
    assert load_calibration().tight_band == rescore["tight_band"]() >= widest


def test_the_expandable_segments_band_comes_from_its_own_verdicts():
    """Runs predicted and made under expandable segments give their own band; h200-batch8 (made under them,
    predicted for the default allocator) counts for neither allocator."""
    rescore = runpy.run_path(str(ROOT / "benchmarks" / "rescore.py"))
    scored = rescore["pre_registered_verdicts"]("expandable_segments")
    batches = {batch for batch, _ in scored}
    assert len(scored) >= 17 and "h200-batch8" not in batches
    assert "h200-batch8" not in {batch for batch, _ in rescore["pre_registered_verdicts"]("default")}
    misses = rescore["verdict_misses"]("expandable_segments")
    widest = max((abs(run.needed_over_capacity - 1) for _, run in misses), default=0.0)
    band = load_calibration().tight_bands["expandable_segments"]
    assert band == rescore["tight_band"]("expandable_segments") >= widest
    assert 0 < band < load_calibration().tight_band


def test_a_plan_under_expandable_segments_gets_its_band():
    profile, plan, calibration, _ = _estimate(24)
    expandable = plan.model_copy(update={"stack": plan.stack.model_copy(update={"allocator": "expandable_segments"})})
    result = estimate(profile, expandable, calibration)
    band = calibration.tight_bands["expandable_segments"]
    assert result.tight_band == band and result.to_dict()["tight_band"] == band
    at_97 = _at(result, 0.97)
    assert not at_97.tight and at_97.clear_fit  # inside the default allocator's band, clear of this one
    assert _at(result, 1 - band / 2).tight and not _at(result, 1 + 2 * band).tight
    default_at_97 = _at(estimate(profile, plan, calibration), 0.97)
    assert default_at_97.tight and default_at_97.tight_band == calibration.tight_band


def test_estimate_json_through_the_cli_carries_tight():
    result = CliRunner().invoke(app, ["estimate", "--gpus", "4", "--vram", "24", "--res", "512", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    estimate_part = document.get("estimate", document)
    assert isinstance(estimate_part["tight"], bool)


def _trainer_plan(text_len: int):
    plan = plan_from_flags(str(ROOT / "benchmarks/stacks/plans/trainer-lora-ds.yaml"), gpus=1,
                           gpu="rtx-3090", text_len=text_len)
    return resolve_profile("qwen2.5-3b", plan), plan


def test_a_tight_plan_is_told_the_two_traces_that_settle_it():
    """Settle: two lengths on the 64-token grid below the plan's, both clear fits by the estimate, the longer the
    longest such (the next rung is not clear), then the replay at the plan's own length on its card."""
    from memplan.planning.advice import SETTLE_STEP, apply, settle

    profile, plan = _trainer_plan(7104)
    calibration = load_calibration()
    result = estimate(profile, plan, calibration)
    assert result.tight
    found = settle(profile, plan, calibration, result=result)
    shorter, longer = found.trace_tokens

    def clear(tokens):
        return estimate(profile, apply(plan, {"inputs": {"text_tokens": tokens}}), calibration).clear_fit

    assert shorter < longer < 7104 and shorter % SETTLE_STEP == longer % SETTLE_STEP == 0
    assert clear(shorter) and clear(longer) and not clear(longer + SETTLE_STEP)
    assert (found.text_tokens, found.card) == (7104, "rtx-3090")
    assert f"--text-len {longer}" in found.line() and "memplan replay a.json.gz b.json.gz --text-len 7104" in found.line()
    clear_plan = _trainer_plan(4096)
    assert settle(*clear_plan, calibration, result=estimate(*clear_plan, calibration)) is None


def test_estimate_prints_how_to_settle_a_tight_verdict():
    argv = ["estimate", "-m", "qwen2.5-3b", "--plan", str(ROOT / "benchmarks/stacks/plans/trainer-lora-ds.yaml"),
            "--gpu", "rtx-3090", "--gpus", "1", "--text-len", "7104", "--host-ram", "64"]
    shown = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "TIGHT" in shown.output and "to settle it on this card" in shown.output
    document = json.loads(CliRunner().invoke(app, argv + ["--format", "json"]).output)
    assert document["settle"]["text_tokens"] == 7104


def test_the_settle_line_follows_a_diagnosis_when_nothing_fits():
    """A tight plan no change fits still gets its settle line after the diagnosis."""
    from memplan.planning.advice import Advice, Settle
    from memplan.report import story

    *_, result = _estimate(24)
    tight = _at(result, 1.01)
    advice = Advice(tight, ["no single change or pair of the 9 tried fits; `memplan search` explores combinations"],
                    settle=Settle((6272, 7168), 7296, "rtx-3090"))
    lines = story.advice_lines(advice)
    assert lines[0].startswith("no single change") and lines[-1] == advice.settle.line()
