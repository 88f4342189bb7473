"""The evaluation seam, plans from flags, and typed probe records (category by category)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.estimate.peak import category_bytes, estimate
from memplan.planning.evaluate import evaluate, evaluate_side_by_side
from memplan.probe.calibrate import compare, load_measurements
from memplan.probe.records import read_records
from memplan.spec.flags import SEED_DIR, deep_merge, plan_from_flags, resolve_profile
from memplan.spec.loading import InputError, load_calibration, load_profile
from memplan.spec.record import ProbeRecord
from memplan.spec.vocabulary import Category, Phase, Verdict

ROOT = Path(__file__).resolve().parents[1]
CENSUSED = ROOT / "reports" / "probes" / "h100-verdicts3.jsonl"  # H100 runs whose ranks carry a census
STEPTIME_G = ROOT / "reports" / "probes" / "h100-steptime-g.jsonl"  # its ZeRO-3 + optimizer offload run
RECORDS = sorted((ROOT / "reports" / "probes").glob("*.jsonl")) + sorted((ROOT / "reports" / "probes" / "split").glob("*.jsonl"))


def test_evaluation_fits_is_verdict_and_host():
    profile = load_profile("sa2va-1b")
    tight = plan_from_flags(None, gpus=1, vram=80, host_ram=1)  # fits the card, not the host
    evaluation = evaluate(profile, tight, calibration=None, reference=tight)
    assert evaluation.estimate.verdict is Verdict.FITS and not evaluation.estimate.host_fits
    assert not evaluation.fits and evaluation.outcome == "HOST OOM" and evaluation.advice is not None
    roomy = plan_from_flags(None, gpus=1, vram=80)
    fitting = evaluate(profile, roomy, calibration=None, reference=roomy)
    assert fitting.fits and fitting.outcome == "FITS" and fitting.advice is None
    assert max(fitting.phase_needed_bytes.values()) == fitting.estimate.needed_bytes


def test_side_by_side_slowdown_is_against_the_first_plan():
    entries = [(load_profile("sa2va-4b"), plan_from_flags(str(SEED_DIR / f"{name}.yaml"))) for name in ("baseline", "plan-a")]
    rows = evaluate_side_by_side(entries, reference=plan_from_flags(None), calibration=None)
    assert rows[0].slowdown == 1.0
    assert rows[1].slowdown == pytest.approx(rows[1].step.per_sample / rows[0].step.per_sample)


def test_plan_from_flags_layers_flags_over_the_plan_file(tmp_path):
    plan = plan_from_flags(None, gpus=2, zero=3, offload="optimizer", res=512, lora_rank=64)
    assert (plan.hardware.num_gpus, plan.engine.zero_stage, plan.engine.offload_optimizer) == (2, 3, "cpu")
    assert plan.inputs.sam2_resolution == 512 and plan.components.llm.lora.rank == 64
    assert plan_from_flags(None, offload="all").engine.zero_stage == 3  # parameter offload needs ZeRO-3
    assert plan_from_flags(None, engine="pytorch").engine.zero_stage == 0
    with pytest.raises(TypeError, match="unknown flags"):
        plan_from_flags(None, gpu_count=2)
    frozen = tmp_path / "frozen.yaml"
    frozen.write_text("components:\n  llm: {train: frozen}\n")
    with pytest.raises(InputError, match="--lora-rank=8: needs components.llm.train=lora"):
        plan_from_flags(str(frozen), lora_rank=8)
    assert resolve_profile(None, plan).name == "sa2va-4b"


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": [2]}) == {"a": {"b": 3, "c": 2}, "d": [2]}


def test_image_tokens_per_tile_one_definition():
    profile = load_profile("sa2va-4b")
    assert profile.image_tokens_per_tile == 256  # (448/14)^2 / 4 (InternVL pixel shuffle)


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.name)
def test_every_shipped_record_reads_as_a_typed_record(path):
    for record in read_records(path):
        typed = ProbeRecord.model_validate({**record, "summary": record.get("summary") or {}})
        assert set(typed.by_phase("max_allocated_bytes")) <= set(Phase)
        categories = typed.categories()
        assert categories is None or set(categories) <= set(Category)


def test_calibrate_compares_category_by_category():
    measurements = load_measurements([CENSUSED])
    comparisons = compare(measurements, load_calibration())
    censused = [c for c in comparisons if c.measured.categories]
    assert censused, "the H100 verdict records carry a census"
    for c in censused:
        errors = c.category_errors()
        assert set(errors) == set(c.measured.categories)
        for category, (estimated, measured, _) in errors.items():
            assert estimated == category_bytes(c.estimate).get(category, 0) and measured == c.measured.categories[category]


def test_a_record_without_a_census_has_no_category_rows():
    record = next(r for r in read_records(CENSUSED))
    ranks = [{k: v for k, v in rank.items() if k != "categories"} for rank in record["ranks"]]
    assert ProbeRecord.model_validate({**record, "ranks": ranks}).categories() is None


def test_validate_json_has_per_category_rows():
    result = CliRunner().invoke(app, ["validate", str(CENSUSED),
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    rows = [r for r in document["records"] if r["categories"]]
    assert rows and all(set(cell) == {"measured_bytes", "estimated_bytes", "error"}
                        for r in rows for cell in r["categories"].values())
    assert "weights" in document["summary"]["categories"]


def test_category_bytes_covers_the_peak_moment():
    profile, plan = load_profile("sa2va-1b"), plan_from_flags(None, gpus=1, vram=80)
    result = estimate(profile, plan)
    per_category = category_bytes(result)
    for term in result.peak.moment.terms:
        assert per_category[term.category] >= term.bytes


def test_a_category_the_census_found_none_of_has_no_ratio():
    """A census category under CENSUS_FLOOR_BYTES (DeepSpeed's ZeRO-3 + offload keeps no param.grad on the GPU)
    gets no relative error: it is listed as absent, not scored as a ratio over a few stray bytes."""
    from memplan.probe.calibrate import CENSUS_FLOOR_BYTES, summary

    comparisons = compare(load_measurements([STEPTIME_G]), load_calibration())
    absent = [c for c in comparisons if c.absent_categories()]
    assert absent, "set g's ZeRO-3 + optimizer offload run holds no gradients the census sees"
    for c in absent:
        for category, estimated in c.absent_categories().items():
            estimated_again, measured, error = c.category_errors()[category]
            assert error is None and measured < CENSUS_FLOOR_BYTES <= estimated == estimated_again
    gradients = summary(comparisons)["categories"]["gradients"]
    assert gradients["absent_count"] == sum(Category.GRADIENTS in c.absent_categories()
                                            for c in comparisons if c.measured.status == "ok")
    assert gradients["max_abs_error"] < 10
