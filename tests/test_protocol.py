"""The measurement protocol (issue 12): run sets, sides, predict and score, cards as CUDA sees them."""

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.planning.protocol import load_runset, plan_fingerprint, probe_argv, side_of
from memplan.planning.scoring import grouped, score
from memplan.spec.cards import card_capacity_bytes, parse_vram_cap
from memplan.spec.gpus import catalogue, get_family, get_gpu

ROOT = Path(__file__).resolve().parents[1]
TINY_RUNSET = ROOT / "tests" / "fixtures" / "runsets" / "tiny.yaml"
BATCH4 = ROOT / "reports" / "probes" / "runsets" / "h200-batch4.yaml"
runner = CliRunner()


def test_side_is_the_first_hash_byte():
    for run_id in ("20261127T090525Z-56477243", "x", "20261202T060515Z-60df12d4"):
        first = hashlib.sha256(run_id.encode()).digest()[0]
        assert side_of(run_id) == ("calibration" if first < 85 else "held-out")
    sides = [side_of(f"run-{i}") for i in range(3000)]
    assert 0.30 < sides.count("calibration") / len(sides) < 0.37


def test_every_card_has_a_cited_cuda_total_below_nvidia_smi():
    for card in catalogue():
        assert card.cuda_total_bytes and card.cuda_total_source and card.family
        assert card.cuda_total_bytes + card.driver_reserved_bytes == pytest.approx(card.vram_gib * 2**30, rel=2e-3)
        assert get_family(card.family) is not None
    assert round(get_gpu("rtx-3090").cuda_total_bytes / 2**30, 2) == 23.70
    assert get_family("hopper").measured and not get_family("ampere").measured


def test_capacity_is_the_cuda_total_of_a_named_card():
    total = get_gpu("rtx-3090").cuda_total_bytes
    assert card_capacity_bytes(gpu="rtx-3090", vram_gib=24) == total
    assert card_capacity_bytes(gpu="rtx-3090", vram_gib=20) == 20 * 2**30  # a share of the card
    assert card_capacity_bytes(gpu=None, vram_gib=24) == 24 * 2**30  # no card: what CUDA reports, as given


def test_vram_cap_takes_gib_or_a_card():
    assert parse_vram_cap("24").cap_bytes == 24 * 2**30 and parse_vram_cap("24").card is None
    cap = parse_vram_cap("rtx-3090")
    assert cap.card == "rtx-3090" and cap.cap_bytes == get_gpu("rtx-3090").cuda_total_bytes
    assert cap.context_bytes == get_family("ampere").context_bytes


def test_gpu_verdict_uses_the_cuda_total(tmp_path):
    result = runner.invoke(app, ["estimate", "-m", "sa2va-1b", "--gpus", "1", "--gpu", "rtx-3090", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["vram_bytes"] == get_gpu("rtx-3090").cuda_total_bytes
    assert "ampere" in data["context_source"] and "assumption" in data["context_source"]


def test_probe_argv_is_the_runset_entry():
    runset = load_runset(TINY_RUNSET)
    argv = probe_argv(runset, runset.runs[0], TINY_RUNSET)
    assert argv[:4] == ["--gpus", "1", "--steps", "1"]
    assert "--no-ckpt" in argv and argv[-2:] == ["--vram-cap", "rtx-3090"]


def test_batch4_is_balanced_around_the_3090():
    lines = [json.loads(x) for x in (ROOT / "reports/probes/predictions/h200-batch4.jsonl").read_text().splitlines()]
    runset = load_runset(BATCH4)
    assert [line["run_key"] for line in lines] == [runset.key(r) for r in runset.runs]
    capped = [line for line in lines if line["vram_cap"] == "rtx-3090"]
    assert len(lines) >= 15 and all(line["gpus"] == 1 for line in lines)
    assert all(abs(c["predicted"]["needed_bytes"] / c["capacity_bytes"] - 1) <= 0.05 for c in capped)
    verdicts = [c["predicted"]["verdict"] for c in capped]
    assert verdicts.count("fits") >= 6 and verdicts.count("oom") >= 6
    assert all(len(line["estimator_revision"]) >= 40 and not line["estimator_revision"].endswith("dirty")
               for line in lines)


def _record(run_key, status, allocated, plan):
    return {"run_id": "20261202T000000Z-0000abcd", "run_key": run_key, "status": status, "plan": plan,
            "environment": {"gpu_name": "NVIDIA H200"}, "summary": {"peak_allocated_bytes": allocated}}


def test_predict_then_score(tmp_path):
    out = tmp_path / "p.jsonl"
    result = runner.invoke(app, ["predict", str(TINY_RUNSET), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {"run_key", "predicted", "estimator_revision", "calibration_sha256", "plan_fingerprint"} <= set(lines[0])
    assert runner.invoke(app, ["predict", str(TINY_RUNSET), "--out", str(out)]).exit_code == 2  # never overwritten
    from memplan.cli.protocol_cmd import planned_plan

    runset = load_runset(TINY_RUNSET)
    plans = [planned_plan(runset, run, TINY_RUNSET).model_dump(mode="json") for run in runset.runs]
    predicted = lines[0]["predicted"]["peak_allocated_bytes"]
    records = [_record("tiny-cpu/tiny-pt-capped", "ok", int(predicted / 1.02), plans[0]),
               _record("tiny-cpu/tiny-pt-oom", "oom", 10**6, plans[1])]
    runs = score(lines, records)
    assert runs[0].error == pytest.approx(0.02, abs=1e-6) and runs[0].verdict_right and runs[0].plan_matches
    assert runs[1].verdict_right and runs[1].error is None
    summary = grouped(runs)
    assert summary["all"]["verdicts"] == {"count": 2, "right": 2, "fits_that_ran_oom": 0}
    rec = tmp_path / "r.jsonl"
    rec.write_text("".join(json.dumps({"schema": "memplan.probe/1", **r}) + "\n" for r in records))
    for fmt in ("table", "json", "md"):
        result = runner.invoke(app, ["score", str(out), str(rec), "--format", fmt])
        assert result.exit_code == 0, result.output
    assert json.loads(runner.invoke(app, ["score", str(out), str(rec), "--format", "json"]).stdout)["summary"]


def test_a_run_that_did_not_happen_scores_as_not_run():
    line = {"run_key": "b/a", "predicted": {"peak_allocated_bytes": 1, "verdict": "fits", "needed_bytes": 1},
            "vram_cap": 24, "capacity_bytes": 2}
    (run,) = score([line], [])
    assert run.side is None and run.verdict_right is None
    assert grouped([run])["all"]["recorded"] == 0


def test_plan_fingerprint_ignores_capacity_fields():
    plan = {"name": "x", "hardware": {"num_gpus": 1, "vram_gib": 24, "gpu": "rtx-3090"}, "engine": {"kind": "pytorch"}}
    other = {"name": "y", "hardware": {"num_gpus": 1, "vram_gib": 140}, "engine": {"kind": "pytorch"}}
    assert plan_fingerprint(plan) == plan_fingerprint(other)
    assert plan_fingerprint(plan) != plan_fingerprint({**other, "engine": {"kind": "deepspeed"}})


def test_vram_cap_card_emulates_the_card_context(monkeypatch):
    """--vram-cap CARD: the allocator gets the card's CUDA total less its family context (no NCCL here),
    whatever this card's own context is; a cap in GiB keeps subtracting what lies outside the allocator."""
    torch = pytest.importorskip("torch")
    from memplan.probe.cap import DeviceCap

    total, used, reserved = 150 * 2**30, 3 * 2**30, 1 * 2**30  # 2 GiB outside the allocator on this card
    fractions = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total - used, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: fractions.append(f))
    cap = parse_vram_cap("rtx-3090")
    device = torch.device("cuda", 0)
    DeviceCap(device, cap.cap_bytes, emulated_context=cap.context_bytes, start_context=2 * 2**30).apply()
    DeviceCap(device, cap.cap_bytes).apply()
    assert fractions[0] * total == pytest.approx(cap.cap_bytes - cap.context_bytes, abs=1)
    assert fractions[1] * total == pytest.approx(cap.cap_bytes - 2 * 2**30, abs=1)


def test_vram_cap_card_counts_nccl_beyond_the_loaded_context(monkeypatch):
    """Under a process group, NCCL is what lies outside the allocator beyond the emulated (loaded) context,
    not beyond the start context: the lazy kernel growth between them is in the emulated context already."""
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    from memplan.probe.cap import DeviceCap

    cap = parse_vram_cap("rtx-3090")
    start, nccl = 500 * 2**20, 900 * 2**20
    outside = cap.context_bytes + nccl  # the context grew from start to the emulated size, plus NCCL
    total, reserved = 150 * 2**30, 4 * 2**30
    fractions = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total - reserved - outside, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: fractions.append(f))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    DeviceCap(torch.device("cuda", 0), cap.cap_bytes, emulated_context=cap.context_bytes, start_context=start).apply()
    assert fractions[0] * total == pytest.approx(cap.cap_bytes - cap.context_bytes - nccl, abs=1)


def test_calibration_is_keyed_by_card_family():
    from memplan.estimate.card import calibration_for_card
    from memplan.spec.calibration import FamilyTerms
    from memplan.spec.loading import load_calibration

    shipped = load_calibration(None)
    assert calibration_for_card(shipped, "h100-sxm")[0] is shipped  # fitted on Hopper
    terms, note = calibration_for_card(shipped, "rtx-3090")  # no Ampere terms: gpus.yaml's assumption
    assert terms.context_bytes == get_family("ampere").context_bytes and "assumption" in note
    fitted = shipped.model_copy(update={"families": {"ampere": FamilyTerms(context_bytes=123, nccl_bytes=4, records=5)}})
    terms, note = calibration_for_card(fitted, "a100-80gb")
    assert (terms.context_bytes, terms.nccl_bytes) == (123, 4) and "5 ampere records" in note


def test_a_record_of_a_newer_schema_runs_the_plan_predicted_before_it():
    """stacks-a/-b were predicted at 1878239, whose Plan had no hardware.nodes, engine.zero_hpz_partition_size
    or engine.fsdp; the probe that ran them records those at 1 / 1 / null. Same plan: it matches; a field that
    matters still does not, and is named."""
    from memplan.planning.protocol import plan_differences, plan_fingerprint
    from memplan.planning.scoring import plan_check

    old = {"hardware": {"num_gpus": 1, "vram_gib": 24}, "engine": {"kind": "pytorch", "zero_stage": 0}}
    new = {"hardware": {"num_gpus": 1, "nodes": 1, "vram_gib": 140}, "engine": {"kind": "pytorch", "zero_stage": 0,
                                                                                 "zero_hpz_partition_size": 1, "fsdp": None}}
    assert plan_fingerprint(old) == plan_fingerprint(new)
    assert plan_check({"plan_fingerprint": plan_fingerprint(old)}, {"plan": new}) == (True, ())
    other = {**new, "engine": {**new["engine"], "zero_stage": 2}}
    assert plan_check({"plan_fingerprint": plan_fingerprint(old)}, {"plan": other})[0] is False
    assert plan_check({"plan": old}, {"plan": other}) == (False, ("engine.zero_stage: 0 != 2",))
    assert plan_differences(old, {**new, "hardware": {"num_gpus": 1, "nodes": 2}}) == ["hardware.nodes: '<absent>' != 2"]


def test_the_stack_batches_ran_the_plans_predicted():
    from memplan.planning.protocol import read_predictions
    from memplan.probe.records import read_records

    root = Path(__file__).resolve().parents[1] / "reports" / "probes"
    for predictions, records in (("predictions/stacks-a.jsonl", "h200-stacks-a.jsonl"),
                                 ("predictions/stacks-b.jsonl", "h200-stacks-b.jsonl"),
                                 ("predictions/h200-batch4.jsonl", "h200-batch4.jsonl")):
        runs = score(read_predictions(root / predictions), read_records(root / records))
        assert [r.name for r in runs if r.plan_matches is False] == []
        assert sum(r.plan_matches is True for r in runs) == sum(r.status is not None for r in runs)


def test_score_groups_verdicts_by_the_predicted_tight_band():
    from memplan.planning.scoring import grouped, score

    def line(key, tight, verdict):
        return {"run_key": key, "name": key, "model": "sa2va-1b", "vram_cap": "rtx-3090", "capacity_bytes": 100,
                "predicted": {"peak_allocated_bytes": 80, "needed_bytes": 90 if verdict == "fits" else 110,
                              "verdict": verdict, "tight": tight}}

    predictions = [line("b/a", False, "fits"), line("b/b", True, "fits"), line("b/c", False, "oom")]
    records = [{"run_key": "b/a", "run_id": "1", "status": "ok", "summary": {"peak_allocated_bytes": 80}},
               {"run_key": "b/b", "run_id": "2", "status": "oom"},
               {"run_key": "b/c", "run_id": "3", "status": "oom"}]
    groups = grouped(score(predictions, records))
    clear, tight = groups["verdict predicted clear of the tight band"], groups["verdict predicted within the tight band"]
    assert clear["verdicts"] == {"count": 2, "right": 2, "fits_that_ran_oom": 0}
    assert tight["verdicts"] == {"count": 1, "right": 0, "fits_that_ran_oom": 1}
