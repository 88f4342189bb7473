"""DeepSpeed configs emitted for the shipped plans: golden files, DeepSpeed's own parser, the CLI.

Regenerate the golden files after an intended change: MEMPLAN_REGEN_GOLDEN=1 pytest tests/test_deepspeed_config.py
"""

import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from memplan.cli.compare_cmd import compare
from memplan.cli.search_cmd import search
from memplan.spec.flags import plan_from_flags
from memplan.integrations.deepspeed import deepspeed_config, launch_command

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "deepspeed"
REGEN = os.environ.get("MEMPLAN_REGEN_GOLDEN") == "1"
TRAINING_PLANS = {
    "sa2va-official": ROOT / "memplan" / "plans" / "sa2va-official.yaml",
    "baseline": ROOT / "memplan" / "plans" / "seed" / "baseline.yaml",
    "plan-a": ROOT / "memplan" / "plans" / "seed" / "plan-a.yaml",
    "plan-b": ROOT / "memplan" / "plans" / "seed" / "plan-b.yaml",
    "plan-c": ROOT / "memplan" / "plans" / "seed" / "plan-c.yaml",
}


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command("compare")(compare)
    app.command("search")(search)
    return app


def check_golden(name: str, config: dict) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with MEMPLAN_REGEN_GOLDEN=1"
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(text), (
        f"{name}: DeepSpeed config differs from {path} (MEMPLAN_REGEN_GOLDEN=1 regenerates it)")


@pytest.mark.parametrize("name", sorted(TRAINING_PLANS))
def test_config_matches_golden(name):
    check_golden(name, deepspeed_config(plan_from_flags(str(TRAINING_PLANS[name]))))


def test_seed_configs_follow_the_plans():
    baseline = deepspeed_config(plan_from_flags(str(TRAINING_PLANS["baseline"])))
    zero = baseline["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu" and zero["overlap_comm"] is True
    plan_b = deepspeed_config(plan_from_flags(str(TRAINING_PLANS["plan-b"])))["zero_optimization"]
    assert plan_b["stage"] == 3 and plan_b["offload_param"]["device"] == "cpu"
    assert plan_b["offload_optimizer"]["device"] == "cpu"


@pytest.fixture(scope="module")
def deepspeed_config_class():
    pytest.importorskip("deepspeed", reason="deepspeed not installed (pip install '.[probe]')")
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig


@pytest.mark.parametrize("name", sorted(TRAINING_PLANS))
def test_deepspeed_parses_config(deepspeed_config_class, name):
    plan = plan_from_flags(str(TRAINING_PLANS[name]))
    parsed = deepspeed_config_class(deepspeed_config(plan))
    assert parsed.zero_optimization_stage == plan.engine.zero_stage
    assert parsed.train_micro_batch_size_per_gpu == plan.inputs.micro_batch
    assert parsed.bfloat16_config.enabled is (plan.precision.compute == "bf16")
    offload = parsed.zero_config.offload_optimizer
    assert (offload is not None and str(offload.device).endswith("cpu")) is (plan.engine.offload_optimizer == "cpu")


def test_compare_emits_chosen_config(tmp_path):
    target = tmp_path / "ds" / "plan-b.json"
    result = CliRunner().invoke(_app(), ["compare", "--format", "json", "--out", str(tmp_path / "r"),
                                         "--emit-deepspeed", str(target), "--choose", "plan-b"])
    assert result.exit_code == 0, result.output
    emitted = json.loads(target.read_text())
    check_golden("plan-b", emitted)
    plan = plan_from_flags(str(TRAINING_PLANS["plan-b"]))
    assert launch_command(plan, "train.py", args=f"--deepspeed {target}") in result.stdout
    assert "deepspeed --num_gpus=4" in result.stdout


def test_compare_emit_default_is_first_fitting_training_plan(tmp_path):
    target = tmp_path / "chosen.json"
    result = CliRunner().invoke(_app(), ["compare", "--format", "csv", "--out", str(tmp_path),
                                         "--emit-deepspeed", str(target)])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in (tmp_path / "compare.csv").read_text().splitlines()[1:]]
    first_fit = next(r[0] for r in rows if r[5] == "fits" and r[2] == "train")
    assert f"DeepSpeed config of {first_fit}" in result.stderr


def test_emitting_an_inference_plan_is_refused(tmp_path):
    result = CliRunner().invoke(_app(), ["compare", "--format", "json", "--out", str(tmp_path),
                                         "--emit-deepspeed", str(tmp_path / "x.json"), "--choose", "plan-d"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_search_emits_a_config_deepspeed_parses(tmp_path, deepspeed_config_class):
    target = tmp_path / "search.json"
    result = CliRunner().invoke(_app(), ["search", "--gpus", "4", "--vram", "24", "--plan", "baseline",
                                         "--format", "json", "--out", str(tmp_path), "--emit-deepspeed", str(target)])
    assert result.exit_code == 0, result.output
    config = json.loads(target.read_text())
    parsed = deepspeed_config_class(config)
    assert parsed.zero_optimization_stage == config["zero_optimization"]["stage"]
