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
    misses = rescore["verdict_misses"]()
    assert len(misses) >= 13
    widest = max(abs(run.needed_over_capacity - 1) for _, run in misses)
    assert load_calibration().tight_band == rescore["tight_band"]() >= widest


def test_estimate_json_through_the_cli_carries_tight():
    result = CliRunner().invoke(app, ["estimate", "--gpus", "4", "--vram", "24", "--res", "512", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    estimate_part = document.get("estimate", document)
    assert isinstance(estimate_part["tight"], bool)
