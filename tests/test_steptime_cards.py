"""Step-time calibration keyed by card: a card's own fit wins for plans on it, every other card keeps the
top-level terms untouched, and each shipped card fit (H200, H100) is reproduced by `memplan calibrate
--terms step-time --card NAME` on the calibration side of that card's records (the held-out side never read)."""

import shutil
from pathlib import Path

import pytest
import yaml

from memplan.planning import stepfit
from memplan.planning.steptime import default_terms, step_time
from memplan.spec.calibration import CardStepTerms, KernelEfficiency, StepTimeTerms
from memplan.spec.flags import plan_from_flags
from memplan.spec.gpus import get_gpu
from memplan.spec.loading import CALIBRATION_PATH, load_profile

ROOT = Path(__file__).resolve().parents[1]
H200_RECORDS = [ROOT / "reports" / "probes" / name
                for name in ("h200-stacks-a.jsonl", "h200-batch4.jsonl", "h200-stacks-b.jsonl")]
# The H100 entry: the calibration side of the H100 records of 2026-12-06 and -07 (one image, one probe at a time;
# refitted after step-time set g, whose records time the optimizer-step phase).
H100_RECORDS = [ROOT / "reports" / "probes" / name
                for name in ("h100-steptime-d.jsonl", "h100-batch10.jsonl", "h100-stacks-e.jsonl", "h100-batch11.jsonl",
                             "h100-steptime-e.jsonl", "h100-stacks-f.jsonl", "h100-steptime-f.jsonl",
                             "h100-steptime-g.jsonl")]

# The H100 top-level terms as shipped before the per-card section existed (they must not move).
H100_TERMS = {"efficiency": {"default": {"gemm": 0.2431, "attention": 0.25, "vision": 0.35, "sam2": 0.2},
                             "h100-sxm": {"gemm": 0.2431, "attention": 0.25, "vision": 0.35, "sam2": 0.2}},
              "module_call_s": 0.000201, "zero3_fetch_s": 0.000799, "cpu_adam_params_per_core_s": 50000000.0,
              "records": 27}


def _card_terms() -> StepTimeTerms:
    entry = CardStepTerms(efficiency=KernelEfficiency(gemm=0.5, attention=0.5, vision=0.5, sam2=0.5),
                          module_call_s=1e-3, zero3_fetch_s=2e-3, cpu_adam_params_per_core_s=1e8)
    return StepTimeTerms(cards={"h200": entry})


def test_a_cards_own_fit_applies_to_that_card_only():
    profile = load_profile("sa2va-1b")
    plan = plan_from_flags(None, gpus=1, vram=80)
    terms = _card_terms()
    plain = StepTimeTerms()
    h200, h100 = get_gpu("h200"), get_gpu("h100-sxm")
    assert step_time(profile, plan, h100, terms=terms).breakdown == step_time(profile, plan, h100, terms=plain).breakdown
    keyed = step_time(profile, plan, h200, terms=terms).breakdown
    assert keyed != step_time(profile, plan, h200, terms=plain).breakdown
    from memplan.planning.workload import workload

    work = workload(profile, plan)
    assert keyed["framework"] == pytest.approx(work.module_calls * 1e-3)
    assert keyed["gemm"] == pytest.approx(work.kernel_flops["gemm"] / (h200.bf16_tflops * 1e12 * 0.5))
    assert terms.on_card("h100-sxm") is terms and terms.on_card("h200") is terms.on_card("h200")
    assert terms.for_card("h200").gemm == 0.5 and terms.for_card("h100-sxm") == KernelEfficiency()


def test_shipped_h100_terms_unchanged_and_h200_keyed():
    shipped = yaml.safe_load(CALIBRATION_PATH.read_text())["step_time"]
    for key, value in H100_TERMS.items():
        assert shipped[key] == value
    assert shipped["fitted_on"] == ["reports/probes/split/steptime-calibration.jsonl"]
    terms = default_terms()
    assert set(terms.cards) == {"h100-sxm", "h200"} and terms.on_card("a100-80gb") is terms
    entry = terms.cards["h200"]
    assert entry.side == "calibration" and entry.card == "NVIDIA H200"
    h100 = terms.cards["h100-sxm"]
    assert h100.side == "calibration" and h100.card == "NVIDIA H100 80GB HBM3"
    assert h100.fitted_on == sorted(str(p.relative_to(ROOT)) for p in H100_RECORDS)


def test_h200_fit_uses_the_calibration_side_only():
    runs, _ = stepfit.timed_runs(_records())
    base = default_terms().model_copy(update={"cards": {}})
    fitted = stepfit.fit_card(runs, base, card="h200", sources=[str(p.relative_to(ROOT)) for p in H200_RECORDS])
    calibration = [r for r in runs if stepfit.is_calibration(r.run_id)]
    assert fitted.cards["h200"].records == len(calibration) == default_terms().cards["h200"].records
    # the held-out runs cannot move the fit: dropping them gives the same terms
    again = stepfit.fit_card(calibration, base, card="h200", sources=[str(p.relative_to(ROOT)) for p in H200_RECORDS])
    assert again == fitted
    assert fitted.cards["h200"] == default_terms().cards["h200"]
    assert fitted.model_copy(update={"cards": {}}) == base


def _records():
    from memplan.probe.records import read_records

    out = {}
    for path in H200_RECORDS:
        for record in read_records(path):
            out.setdefault(str(record.get("run_id")), record)
    return list(out.values())


@pytest.mark.parametrize("card,records", [("h200", H200_RECORDS), ("h100-sxm", H100_RECORDS)])
def test_calibrate_card_reproduces_the_shipped_file(tmp_path, monkeypatch, card, records):
    from typer.testing import CliRunner

    from memplan.cli.main import app

    monkeypatch.chdir(ROOT)
    target = tmp_path / "calibration.yaml"
    shutil.copy(CALIBRATION_PATH, target)
    args = ["calibrate", *[str(p.relative_to(ROOT)) for p in records], "--terms", "step-time", "--card", card,
            "--out", str(target), "--force"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert target.read_text() == CALIBRATION_PATH.read_text()


def test_card_option_needs_step_time_terms(tmp_path):
    from typer.testing import CliRunner

    from memplan.cli.main import app

    result = CliRunner().invoke(app, ["calibrate", str(H200_RECORDS[0]), "--card", "h200", "--out",
                                      str(tmp_path / "c.yaml")])
    assert result.exit_code != 0 and "--card" in result.output


def test_a_step_time_says_whether_its_card_has_terms_of_its_own():
    """A step time on a card without its own fit says it ranks plans and does not size a schedule (on the
    H100, pre-registered, the default terms ranked 5 runs right and sized them 1.5-2x slow: docs/benchmarks.md)."""
    from memplan.report.steps import step_line

    profile = load_profile("sa2va-1b")
    plan = plan_from_flags(None, gpus=1, vram=80)
    terms = _card_terms()
    own, default = step_time(profile, plan, get_gpu("h200"), terms=terms), step_time(profile, plan, get_gpu("h100-sxm"),
                                                                                      terms=terms)
    assert own.card_terms and not default.card_terms
    assert own.to_dict()["card_terms"] is True and default.to_dict()["card_terms"] is False
    assert "default terms" not in step_line(own)
    assert "default terms, no per-card fit for h100-sxm" in step_line(default)


def test_compare_names_the_cards_without_step_time_terms():
    from typer.testing import CliRunner

    from memplan.cli.main import app

    untuned = CliRunner().invoke(app, ["compare", "--gpu", "a100-80gb", "--format", "md"])
    tuned = CliRunner().invoke(app, ["compare", "--gpu", "h200", "--format", "md"])
    assert untuned.exit_code == 0 and tuned.exit_code == 0, untuned.output + tuned.output
    assert "no per-card fit for a100-80gb" in untuned.output
    assert "no per-card fit" not in tuned.output
