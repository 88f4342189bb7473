"""The CLI through typer's CliRunner: outputs for every profile, JSON contract, one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.spec.loading import profile_names

runner = CliRunner()
JSON_KEYS = {"verdict", "peak_allocated_bytes", "peak_reserved_bytes", "device_bytes", "host_bytes",
             "vram_bytes", "headroom_bytes", "peak_phase", "breakdown"}


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_readme_command():
    result = invoke("estimate", "--gpus", "4", "--vram", "24", "--res", "512")
    assert result.exit_code == 0, result.output
    assert "FITS" in result.output or "OOM" in result.output
    assert "peak: backward" in result.output and "cheapest changes that fit" in result.output


@pytest.mark.parametrize("name", profile_names())
def test_json_for_every_profile(name):
    result = invoke("estimate", "--model", name, "--gpus", "2", "--vram", "24", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert JSON_KEYS <= set(data)
    assert data["verdict"] in ("fits", "oom")
    for key in JSON_KEYS - {"verdict", "peak_phase", "breakdown"}:
        assert isinstance(data[key], int)
    assert all(isinstance(row["bytes"], int) and row["bytes"] > 0 for row in data["breakdown"])
    assert data["headroom_bytes"] == data["vram_bytes"] - data["needed_bytes"]
    assert data["needed_bytes"] <= data["device_bytes"] or data["breakdown"]
    assert (data["verdict"] == "fits") == (data["headroom_bytes"] >= 0)


@pytest.mark.parametrize("name", profile_names())
def test_table_and_markdown_for_every_profile(name):
    table = invoke("estimate", "--model", name)
    assert table.exit_code == 0, table.output
    assert "total" in table.output
    md = invoke("estimate", "--model", name, "--format", "md")
    assert md.exit_code == 0 and md.output.startswith("## ")


def test_profiles_lists_counts():
    result = invoke("profiles", "--format", "json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["sa2va-1b"]["total_params"] == 1_027_756_594


def test_flags_override_plan():
    a = json.loads(invoke("estimate", "--tiles", "2", "--text-len", "1024", "--format", "json").output)
    b = json.loads(invoke("estimate", "--tiles", "2", "--text-len", "8192", "--format", "json").output)
    assert b["peak_allocated_bytes"] > a["peak_allocated_bytes"]


@pytest.mark.parametrize("command", [["estimate", "--tiles", "13", "--text-len", "2048"], ["compare", "PLAN"],
                                     ["search", "--plan", "PLAN", "--gpus", "4", "--vram", "24"]])
def test_a_sequence_too_short_for_its_image_tokens_is_bad_input(command, tmp_path):
    """13 tiles x 256 image tokens cannot sit in a 2,048-token sequence (--text-len counts image tokens):
    one line naming the field, exit 2, as the probe says for the same plan."""
    plan = tmp_path / "short.yaml"
    plan.write_text("name: short\ninputs:\n  tiles: 13\n  text_tokens: 2048\n")
    result = invoke(*[str(plan) if word == "PLAN" else word for word in command])
    assert result.exit_code == 2, result.output
    assert "inputs.text_tokens=2048" in result.output and "at least 3334" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (["--model", "sa2va-4c"], "closest: sa2va-4b"),
    (["--gpus", "0"], "num_gpus=0"),
    (["--gpus", "-2"], "num_gpus=-2"),
    (["--vram", "0"], "vram_gib=0"),
    (["--engine", "pytorch", "--zero", "3"], "zero_stage=3"),
    (["--zero", "2", "--offload", "all"], "offload_params=cpu needs zero_stage=3"),
    (["--res", "1000"], "sam2_resolution=1000"),
    (["--res", "8192"], "sam2_resolution=8192"),
    (["--tiles", "100"], "tiles=100"),
    (["--lora-rank", "100000"], "rank=100000"),
    (["--plan", "no/such/plan.yaml"], "file not found"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    result = invoke("estimate", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
