"""memplan compare and the advice: the seed's five plans side by side, every report format, advice that fits."""

import csv
import io
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from memplan.planning.advice import advise, diagnose
from memplan.spec.flags import SEED_PLANS
from memplan.spec.flags import plan_from_flags
from memplan.estimate.peak import estimate
from memplan.spec.loading import load_profile
from memplan.spec.vocabulary import Category, Verdict

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "memplan" / "plans" / "seed"


def _app() -> typer.Typer:
    """The real `memplan` CLI, where compare and search are registered."""
    from memplan.cli.main import app

    return app


@pytest.fixture(scope="module")
def compare_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare-json")
    result = CliRunner().invoke(_app(), ["compare", "--format", "json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def test_no_arguments_compares_the_five_seed_plans(compare_json):
    document, out = compare_json
    assert [p["plan"] for p in document["plans"]] == list(SEED_PLANS)
    assert (out / "compare.json").exists()
    for plan in document["plans"]:
        assert plan["model"] and plan["peak_phase"] and isinstance(plan["device_bytes"], int)
        assert plan["verdict"] in ("fits", "oom")


def test_plan_d_is_inference_without_training_state(compare_json):
    document, _ = compare_json
    plan_d = document["plans"][-1]
    assert plan_d["plan"] == "plan-d" and plan_d["mode"] == "inference"
    categories = {term["category"] for term in plan_d["breakdown"]}
    for absent in (Category.OPTIMIZER_STATE, Category.MASTER_WEIGHTS, Category.GRADIENTS, Category.TRAINABLE_WEIGHTS):
        assert absent.value not in categories
    assert plan_d["trainable_params"] == 0 and "no training (inference only)" in plan_d["gives_up"]
    assert set(plan_d["phases_needed_bytes"]) == {"init", "forward"}


def test_oom_plans_carry_advice_and_slowdown_is_against_the_first(compare_json):
    document, _ = compare_json
    assert document["plans"][0]["slowdown"] == 1.0
    for plan in document["plans"]:
        if plan["verdict"] == "oom":
            assert plan["advice"]["diagnosis"][0].startswith("OOM by")
            assert plan["advice"]["by_slowdown"], plan["plan"]
        else:
            assert plan["advice"] is None


@pytest.mark.parametrize("name", SEED_PLANS)
def test_advice_changes_fit_when_re_estimated(name):
    plan = plan_from_flags(str(SEED / f"{name}.yaml"))
    profile = load_profile(plan.model)
    advice = advise(profile, plan)
    if advice.fits:
        assert advice.changes == [] and advice.diagnosis[0].startswith("fits")
        return
    assert advice.changes, advice.diagnosis
    for change in advice.changes:
        fresh = estimate(profile, change.plan)
        assert fresh.verdict is Verdict.FITS and fresh.host_fits, change.label
    slow = [c.slowdown for c in advice.by_slowdown()]
    assert slow == sorted(slow)
    lost = [c.fidelity_loss for c in advice.by_sacrifice()]
    assert lost == sorted(lost)
    assert advice.top() is advice.by_sacrifice()[0]


def test_advice_pairs_when_no_single_change_fits():
    plan = plan_from_flags(str(SEED / "baseline.yaml"), vram=14)  # far below the baseline's peak
    profile = load_profile(plan.model)
    advice = advise(profile, plan)
    assert advice.tried > 12
    for change in advice.changes:
        assert estimate(profile, change.plan).verdict is Verdict.FITS


def test_diagnosis_names_phase_term_and_overflow():
    plan = plan_from_flags(str(SEED / "baseline.yaml"), vram=16)
    result = estimate(load_profile(plan.model), plan)
    lines = diagnose(result)
    assert lines[0].startswith("OOM by ") and result.peak_phase.value in lines[0]
    assert lines[1].startswith("largest term: ")
    assert lines[2].startswith("phases over the VRAM: ")


@pytest.mark.parametrize("fmt,file_name", [("html", "compare.html"), ("csv", "compare.csv"),
                                           ("json", "compare.json"), ("md", "compare.md"), ("table", "compare.md")])
def test_every_format_writes_its_report(tmp_path, fmt, file_name):
    result = CliRunner().invoke(_app(), ["compare", "--format", fmt, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / file_name).read_text(encoding="utf-8")
    for name in SEED_PLANS:
        assert name in text
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["plan"] for r in rows] == list(SEED_PLANS)
        assert int(rows[0]["device_bytes"]) > 0
    if fmt == "html":
        assert text.startswith("<!DOCTYPE html>") and "<table>" in text
        assert "src=\"http" not in text  # self-contained
    if fmt in ("html", "md", "table"):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            assert "charts skipped" in result.output
        else:
            assert (tmp_path / "compare-memory.png").read_bytes()[:4] == b"\x89PNG"
            assert (tmp_path / "compare-phases.png").exists()
            if fmt == "html":
                assert text.count("data:image/png;base64,") == 2


def test_charts_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    from memplan.report import charts

    monkeypatch.setattr(charts, "available", lambda: False)
    result = CliRunner().invoke(_app(), ["compare", "--format", "html", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "matplotlib is not installed: charts skipped" in result.output
    assert not list(tmp_path.glob("*.png"))
    assert "<table>" in (tmp_path / "compare.html").read_text()


def test_compare_named_plans_and_model_override(tmp_path):
    result = CliRunner().invoke(_app(), ["compare", "baseline", "plan-b", "-m", "sa2va-4b", "--format", "json",
                                         "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [p["plan"] for p in document["plans"]] == ["baseline", "plan-b"]
    assert {p["model"] for p in document["plans"]} == {"sa2va-4b"}


def test_compare_gpu_swaps_the_card(tmp_path):
    result = CliRunner().invoke(_app(), ["compare", "baseline", "--gpu", "a100-80gb", "--format", "json",
                                         "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plans"][0]
    from memplan.spec.gpus import get_gpu

    cuda_total = get_gpu("a100-80gb").cuda_total_bytes  # what CUDA reports, not 80 GiB (issue 12)
    assert plan["gpu"] == "a100-80gb" and plan["vram_bytes"] == cuda_total and plan["verdict"] == "fits"


@pytest.mark.parametrize("args,needle", [
    (["compare", "no-such-plan"], "known plans"),
    (["compare", "--gpu", "rtx-3900"], "closest: rtx-3090"),
    (["compare", "--emit-deepspeed", "x.json", "--choose", "9"], "1..5"),
    (["compare", "--emit-deepspeed", "x.json", "--choose", "plan-z"], "no such plan"),
    (["compare", "--format", "pdf"], "pdf"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    result = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert needle in result.stderr
    if args[1:2] != ["--format"]:  # click's own usage errors are formatted by the app (OneLineErrors in main)
        assert len(lines) == 1 and lines[0].startswith("error: ")
