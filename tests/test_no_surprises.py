"""No surprises on disk, host RAM said, probe UX, version and help (issue 13: points 2, 5, 9, 10)."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import memplan
from memplan.cli.main import app
from memplan.spec.loading import CALIBRATION_PATH, PACKAGE_ROOT

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "reports" / "probes" / "h100-batch1.jsonl"
runner = CliRunner()


def _invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def _one_error_line(result, code=2):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ---------------------------------------------------------------- calibrate
def test_calibrate_writes_a_new_file_beside_the_records_never_the_shipped_one(tmp_path):
    records = tmp_path / "runs.jsonl"
    shutil.copy(RECORDS, records)
    shipped = CALIBRATION_PATH.read_bytes()
    first = _invoke("calibrate", records)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "calibration.yaml").exists() and "--calibration" in first.output
    second = _invoke("calibrate", records)
    assert second.exit_code == 0 and (tmp_path / "calibration-2.yaml").exists()
    assert CALIBRATION_PATH.read_bytes() == shipped


def test_calibrate_refuses_to_overwrite_without_force(tmp_path):
    target = tmp_path / "mine.yaml"
    target.write_text("# my notes\n")
    line = _one_error_line(_invoke("calibrate", RECORDS, "--out", target))
    assert "exists; pass --force" in line and target.read_text() == "# my notes\n"
    forced = _invoke("calibrate", RECORDS, "--out", target, "--force")
    assert forced.exit_code == 0 and "schema: memplan.calibration/1" in target.read_text()


def test_calibrate_refuses_the_shipped_calibration_even_with_force():
    shipped = CALIBRATION_PATH.read_bytes()
    line = _one_error_line(_invoke("calibrate", RECORDS, "--out", CALIBRATION_PATH, "--force"))
    assert "the calibration memplan ships" in line and CALIBRATION_PATH.read_bytes() == shipped


# ---------------------------------------------------------------- compare, search, profile import
@pytest.mark.parametrize("args", [("compare",), ("compare", "--format", "md"), ("compare", "--format", "html"),
                                  ("search", "--gpus", "4", "--vram", "24", "--host-ram", "128", "--top", "2")])
def test_compare_and_search_write_nothing_without_out(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []


def test_compare_out_writes_there_and_keeps_existing_files_unless_force(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "r"
    assert _invoke("compare", "--out", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare-memory.png", "compare-phases.png", "compare.md"]
    (out / "compare.md").write_text("mine")
    line = _one_error_line(_invoke("compare", "--out", out))
    assert "compare.md" in line and "--force" in line and (out / "compare.md").read_text() == "mine"
    assert _invoke("compare", "--out", out, "--force").exit_code == 0
    assert (out / "compare.md").read_text() != "mine"


def test_profile_import_writes_only_where_out_says_never_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in (PACKAGE_ROOT / "profiles").iterdir())
    config = ROOT / "tests" / "fixtures" / "hf_configs" / "qwen2.5-0.5b-instruct.json"
    result = _invoke("profile", "import", config, "--name", "my-qwen")
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == [] and "nothing written" in result.output  # the YAML is printed
    assert "name: my-qwen" in result.output and "--out my-qwen.yaml" in result.output
    result = _invoke("profile", "import", config, "--name", "my-qwen", "--out", tmp_path / "my-qwen.yaml")
    assert result.exit_code == 0 and (tmp_path / "my-qwen.yaml").exists() and "-m " in result.output
    assert sorted(p.name for p in (PACKAGE_ROOT / "profiles").iterdir()) == before
    line = _one_error_line(_invoke("profile", "import", config, "--out", PACKAGE_ROOT / "profiles" / "x.yaml"))
    assert "inside the installed memplan package" in line


# ---------------------------------------------------------------- host RAM
def test_host_ram_comes_from_the_machine_when_not_given_and_the_output_says_so(monkeypatch):
    monkeypatch.setattr("memplan.cli.host.machine_host_ram_gib", lambda: 61.5)
    table = _invoke("estimate")
    assert "of 61.50 GiB (this machine's, psutil; set with --host-ram)" in table.output
    data = json.loads(_invoke("estimate", "--format", "json").output)
    assert data["host_ram_bytes"] == int(61.5 * 2**30) and "this machine's" in data["host_ram_source"]
    given = json.loads(_invoke("estimate", "--format", "json", "--host-ram", "100").output)
    assert given["host_ram_bytes"] == 100 * 2**30 and given["host_ram_source"] == "given with --host-ram"
    seed = json.loads(_invoke("estimate", "--plan", "plans/seed/plan-a.yaml", "--format", "json").output)
    assert seed["host_ram_bytes"] == 128 * 2**30 and seed["host_ram_source"] == "from plan-a.yaml"  # inherited


def test_psutil_reads_this_machine():
    import psutil

    from memplan.cli.host import total_ram_gib

    assert total_ram_gib() == round(psutil.virtual_memory().total / 2**30, 2) > 0


# ---------------------------------------------------------------- probe
def test_probe_without_torch_is_one_line_with_the_install_command(monkeypatch):
    import memplan.cli.probe as probe

    real = probe.find_spec
    monkeypatch.setattr(probe, "find_spec", lambda name: None if name == "torch" else real(name))
    line = _one_error_line(_invoke("probe", "--device", "cpu"))
    assert "torch" in line and "pip install 'memplan[probe]'" in line


def test_probe_progress_says_phase_and_step():
    from memplan.probe.progress import ProbeProgress, phase_text, rank_text

    assert phase_text("init", None, 3).startswith("init: building the model")
    assert phase_text("backward", 1, 3) == "step 2/3: backward"
    assert rank_text(None, 3, 4) == "4 ranks under torchrun; rank 0: starting (imports, rendezvous, CUDA)"
    partial = {"phases": {"init": {}}, "step_phases": [{"forward": {}, "backward": {}}]}
    assert rank_text(partial, 3, 4) == "4 ranks under torchrun; rank 0: step 1/3: backward done"
    with ProbeProgress(steps=2, enabled=False) as progress:
        progress.phase("optimizer_step", 1)
        assert progress.text == "step 2/2: optimizer step"


def test_the_launch_line_explains_its_environment(tmp_path):
    from memplan.integrations.deepspeed import NCCL_ENV

    result = _invoke("estimate", "--gpus", "4", "--vram", "80", "--emit-deepspeed", tmp_path / "ds.json")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    launch = next(i for i, line in enumerate(lines) if line.startswith("NCCL_NVLS_ENABLE=0") and "deepspeed" in line)
    comments = [line for line in lines[:launch] if line.startswith("#")]
    for key in NCCL_ENV:
        assert any(line.startswith(f"#   {key}={NCCL_ENV[key]}: ") for line in comments), key


# ---------------------------------------------------------------- version, help, docs
def test_version_and_short_help():
    version = _invoke("--version")
    assert version.exit_code == 0 and version.output.strip() == f"memplan {memplan.__version__}"
    for args in (["-h"], ["estimate", "-h"], ["profile", "import", "-h"]):
        short, long = _invoke(*args), _invoke(*[a if a != "-h" else "--help" for a in args])
        assert short.exit_code == 0 and short.output == long.output and "Usage" in short.output


def test_nothing_in_the_repository_points_outside_it():
    suffixes = {".md", ".py", ".yaml", ".toml", ".json"}
    outside = ("../" + "shared", "/work/" + "shared")  # spelled apart so this file does not match itself
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.suffix in suffixes and ".git" not in p.parts and "egg-info" not in str(p)
                 and any(o in p.read_text(encoding="utf-8", errors="replace") for o in outside)]
    assert offenders == []


def test_calibrate_reserved_fits_only_the_reserved_pool(tmp_path):
    """--terms reserved: the roomy-card device view's two terms change; every term a verdict reads stays."""
    import yaml

    target = tmp_path / "cal.yaml"
    shipped = yaml.safe_load(CALIBRATION_PATH.read_text())
    target.write_text(CALIBRATION_PATH.read_text())
    result = _invoke("calibrate", ROOT / "reports" / "probes" / "h200-stacks-a.jsonl", "--terms", "reserved",
                     "--out", target, "--force")
    assert result.exit_code == 0, result.output
    fitted = yaml.safe_load(target.read_text())
    changed = {key for key in shipped if shipped[key] != fitted.get(key)}
    assert changed <= {"reserved_ratio", "reserved_constant_bytes", "fitted_on", "median_error"}
    assert {"reserved_ratio", "reserved_constant_bytes"} & changed
    assert all(fitted[key] == shipped[key] for key in ("pressure_ratio", "pressure_block", "context_bytes",
                                                         "nccl_bytes", "tight_band", "step_time"))
