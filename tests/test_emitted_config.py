"""--emit-deepspeed writes a config and the plan it was made for; `memplan probe --deepspeed-config`
takes that pair back (and refuses a config that disagrees with the plan); the VRAM cap and the
mid-run fault hook of the probe."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.spec.flags import plan_from_flags
from memplan.cli.probe import load_deepspeed_config
from memplan.integrations.deepspeed import deepspeed_config
from memplan.estimate.peak import estimate
from memplan.spec.loading import InputError, load_calibration, load_plan, load_profile
from memplan.probe import faults
from memplan.probe import run as probe_run
from memplan.probe.cap import DeviceCap
from memplan.probe.distributed import release_distributed
from memplan.spec.vocabulary import Phase

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_estimate_emits_config_and_plan_that_round_trip(tmp_path):
    target = tmp_path / "ds" / "z3.json"
    result = invoke("estimate", "--model", "sa2va-1b", "--gpus", "2", "--vram", "24", "--zero", "3", "--offload",
                    "optimizer", "--format", "json", "--emit-deepspeed", target)
    assert result.exit_code == 0, result.output
    config = json.loads(target.read_text())
    plan = load_plan(tmp_path / "ds" / "z3.plan.yaml")
    assert plan.model == "sa2va-1b"
    assert config == deepspeed_config(plan)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    flags = plan_from_flags(None, gpus=2, vram=24, zero=3, offload="optimizer", host_ram=256)  # conftest's machine RAM
    cal = load_calibration(None)
    assert estimate(load_profile("sa2va-1b"), plan, cal).to_dict() == estimate(load_profile("sa2va-1b"), flags, cal).to_dict()
    assert "deepspeed --num_gpus=2" in result.output
    assert f"memplan probe --plan {tmp_path / 'ds' / 'z3.plan.yaml'} --deepspeed-config {target} --vram-cap 24" in result.output


def test_estimate_refuses_to_emit_for_plain_pytorch(tmp_path):
    result = invoke("estimate", "--engine", "pytorch", "--emit-deepspeed", tmp_path / "x.json")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: --emit-deepspeed: plan")
    assert not (tmp_path / "x.json").exists()


def test_search_emits_the_model_it_searched(tmp_path):
    """Regression: the emitted plan named the base plan's model (sa2va-4b) instead of --model."""
    target = tmp_path / "s.json"
    result = invoke("search", "--gpus", "1", "--vram", "24", "--model", "sa2va-1b", "--format", "json",
                    "--out", tmp_path, "--emit-deepspeed", target)
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "s.plan.yaml")
    assert plan.model == "sa2va-1b"
    found = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    front = found["plans"][0]
    assert estimate(load_profile("sa2va-1b"), plan, load_calibration(None)).device_bytes == front["device_bytes"]


def test_shipped_emitted_pairs_agree():
    for config in sorted((ROOT / "reports" / "emitted").glob("*.json")):
        plan = load_plan(config.with_name(config.stem + ".plan.yaml"))
        assert load_deepspeed_config(config, plan) == deepspeed_config(plan)


def test_probe_refuses_a_config_that_disagrees_with_the_plan(tmp_path):
    plan = plan_from_flags(None, zero=2)
    config = deepspeed_config(plan)
    config["zero_optimization"]["stage"] = 3
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"zero_optimization.stage is 3 but the plan gives 2"):
        load_deepspeed_config(path, plan)
    result = invoke("probe", "--model", "tests/fixtures/profiles/tiny-sa2va.yaml", "--zero", "2", "--lora-rank", "8",
                    "--text-len", "256", "--tiles", "2", "--res", "256", "--objects", "2", "--device", "cpu",
                    "--deepspeed-config", path)
    assert result.exit_code == 2
    assert "zero_optimization.stage is 3" in result.output and "Traceback" not in result.output


def test_probe_config_offload_must_match(tmp_path):
    plan = plan_from_flags(None, zero=3)
    config = deepspeed_config(plan_from_flags(None, zero=3, offload="optimizer"))
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"offload_optimizer.device is 'cpu' but the plan gives None"):
        load_deepspeed_config(path, plan)
    path.write_text("[1, 2]")
    with pytest.raises(InputError):
        load_deepspeed_config(path, plan)


def test_probe_config_needs_a_deepspeed_training_plan(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(deepspeed_config(plan_from_flags(None))))
    with pytest.raises(InputError, match="engine.kind=deepspeed"):
        load_deepspeed_config(path, plan_from_flags(None, engine="pytorch"))


class _FakeCuda:
    def __init__(self, total, used, reserved):
        self.total, self.used, self.reserved, self.fractions = total, used, reserved, []

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.total - self.used, self.total))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: self.reserved)
        monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                            lambda fraction, device=None: self.fractions.append(fraction))


def test_device_cap_leaves_room_for_what_lies_outside_the_allocator(monkeypatch):
    gib = 2**30
    fake = _FakeCuda(total=80 * gib, used=3 * gib, reserved=1 * gib)  # 2 GiB outside (context + NCCL)
    fake.install(monkeypatch)
    cap = DeviceCap(torch.device("cuda", 0), 24 * gib)
    cap.apply()
    assert fake.fractions[-1] == pytest.approx(22 / 80)
    fake.used = 2 * gib  # less outside later: the largest seen is kept for the note, the limit follows now
    cap.apply()
    assert fake.fractions[-1] == pytest.approx(23 / 80) and cap.outside == 2 * gib
    cap.lift()
    assert fake.fractions[-1] == 1.0
    assert "allocator limited to the cap less 2147483648 bytes" in cap.note()


def test_device_cap_is_inert_on_cpu_or_without_a_cap(monkeypatch):
    fake = _FakeCuda(80, 3, 1)
    fake.install(monkeypatch)
    DeviceCap(torch.device("cpu"), 24).apply()
    DeviceCap(torch.device("cuda", 0), None).apply()
    assert fake.fractions == []


def test_mid_run_fault_hook(monkeypatch):
    exits = []
    monkeypatch.setattr(faults.os, "_exit", lambda code: exits.append(code))
    monkeypatch.setattr(faults, "world", lambda: (1, 1, 2))
    monkeypatch.setenv("MEMPLAN_PROBE_FAULT", "1:17@backward")
    faults.at_phase(Phase.BACKWARD, 0)  # first step: not yet
    faults.at_phase(Phase.FORWARD, 1)  # another phase
    assert exits == []
    faults.at_phase(Phase.BACKWARD, 1)
    assert exits == [17]
    monkeypatch.setenv("MEMPLAN_PROBE_FAULT", "0:17@backward")  # another rank
    faults.at_phase(Phase.BACKWARD, 1)
    assert exits == [17]


def test_missing_deepspeed_is_a_recorded_error(monkeypatch):
    """A DeepSpeed plan where DeepSpeed cannot be imported ends as an 'error' result naming it."""
    import sys

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    profile = load_profile(str(ROOT / "tests" / "fixtures" / "profiles" / "tiny-sa2va.yaml"))
    plan = plan_from_flags(None, gpus=1, zero=2, lora_rank=8, text_len=256, tiles=2, res=256, objects=2)
    result = probe_run.measure_rank(profile, plan, steps=1, device="cpu")
    release_distributed()
    assert result.status == "error"
    assert "deepspeed" in result.error and result.error.startswith("init: ")
