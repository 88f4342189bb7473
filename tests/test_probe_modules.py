"""The probe's small modules on their own: the fault hook's spellings, the engine registry, the
environment keys, the rank triple, and the size of every probe and integrations module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memplan.probe import faults
from memplan.probe.distributed import world
from memplan.probe.engines import ENGINES, EngineSetup, engine_kind, make_engine
from memplan.probe.environment import environment, fallback_environment
from memplan.spec.plan import Plan
from memplan.spec.vocabulary import Phase

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("value", "fault"), [
    ("1:17", faults.Fault(rank=1, code=17, phase=None)),
    ("0:hang", faults.Fault(rank=0, code=None, phase=None)),
    ("1:17@backward", faults.Fault(rank=1, code=17, phase="backward")),
    ("2:hang@init", faults.Fault(rank=2, code=None, phase="init")),
    ("", None),
])
def test_fault_spellings(value, fault):
    assert faults.planned_fault(value) == fault


@pytest.mark.parametrize("value", ["1", "x:17", "1:seventeen@backward"])
def test_a_malformed_fault_names_the_spellings(value):
    with pytest.raises(ValueError, match="RANK:CODE"):
        faults.planned_fault(value)


def test_fault_at_start_only_without_a_phase(monkeypatch):
    exits = []
    monkeypatch.setattr(faults.os, "_exit", lambda code: exits.append(code))
    monkeypatch.setenv(faults.FAULT_ENV, "1:7@forward")
    faults.at_start(1)
    assert exits == []
    monkeypatch.setenv(faults.FAULT_ENV, "1:7")
    faults.at_start(0)
    faults.at_phase(Phase.FORWARD, 1)  # no phase named: never mid-run
    assert exits == []
    faults.at_start(1)
    assert exits == [7]


def test_fault_in_init_fires_without_a_step(monkeypatch):
    exits = []
    monkeypatch.setattr(faults.os, "_exit", lambda code: exits.append(code))
    monkeypatch.setattr(faults, "world", lambda: (0, 0, 1))
    monkeypatch.setenv(faults.FAULT_ENV, "0:5@init")
    faults.at_phase(Phase.INIT, None)
    assert exits == [5]


def test_world_reads_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert world() == (3, 1, 4)


def test_every_engine_kind_of_the_plan_is_registered():
    kinds = Plan.model_fields["engine"].annotation.model_fields["kind"].annotation.__args__
    assert set(kinds) <= set(ENGINES)
    assert engine_kind(Plan(engine={"kind": "pytorch", "zero_stage": 0})) is ENGINES["pytorch"]


def test_an_unregistered_engine_kind_is_named(monkeypatch):
    monkeypatch.delitem(ENGINES, "pytorch")
    plan = Plan(engine={"kind": "pytorch", "zero_stage": 0})
    setup = EngineSetup(profile=None, plan=plan, device=torch.device("cpu"), world_size=1)
    with pytest.raises(RuntimeError, match="engine.kind=pytorch: the probe has no engine for it"):
        make_engine(setup)


def test_fallback_environment_has_the_measured_keys():
    measured = environment(torch.device("cpu"), 2)
    fallback = fallback_environment(2)
    assert list(fallback) == list(measured)
    assert measured["torch"] == torch.__version__ and fallback["torch"] is None
    assert fallback["world_size"] == measured["world_size"] == 2
@pytest.mark.parametrize("package", ["probe", "integrations"])
def test_no_module_over_400_lines(package):
    for path in sorted((ROOT / "memplan" / package).rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)}: {lines} lines"
