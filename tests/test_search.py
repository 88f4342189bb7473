"""memplan search: only feasible plans, >= 10,000 candidates decided, the pruned sweep agrees with brute force."""

import itertools
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from memplan.spec.flags import plan_from_flags
from memplan.estimate.peak import estimate
from memplan.spec.gpus import get_gpu
from memplan.spec.loading import load_profile
from memplan.planning.search import Knobs, SearchSpace, _Builder, pareto_front, search as run_search
from memplan.spec.units import gib_to_bytes
from memplan.spec.vocabulary import Verdict

ROOT = Path(__file__).resolve().parent.parent
BASELINE = str(ROOT / "memplan" / "plans" / "seed" / "baseline.yaml")


def _app() -> typer.Typer:
    """The real `memplan` CLI, where compare and search are registered."""
    from memplan.cli.main import app

    return app


@pytest.fixture(scope="module")
def seed_search():
    base = plan_from_flags(BASELINE)
    profile = load_profile(base.model)
    return profile, base, run_search(profile, base, num_gpus=4, vram_gib=24.0, host_ram_gib=128)


def test_evaluates_at_least_ten_thousand_candidates(seed_search):
    _, _, result = seed_search
    assert SearchSpace().size() >= 10_000
    assert result.stats.candidates >= 10_000
    # generous bound for a 2-core CI machine; benchmarks/search_speed.py measures the real time
    assert result.stats.seconds < 6.0


def test_front_is_feasible_when_re_estimated(seed_search):
    profile, _, result = seed_search
    assert result.front, "the seed's case has plans that fit (ZeRO-3 at least)"
    for candidate in result.front:
        fresh = estimate(profile, candidate.plan)
        assert fresh.verdict is Verdict.FITS and fresh.host_fits, candidate.name
        assert fresh.device_bytes == candidate.estimate.device_bytes <= gib_to_bytes(24.0)
        assert candidate.plan.hardware.num_gpus == 4


def test_front_is_a_pareto_front(seed_search):
    _, _, result = seed_search
    front = result.front
    times = [c.seconds_per_sample for c in front]
    scores = [c.fidelity for c in front]
    assert times == sorted(times) and scores == sorted(scores)
    assert len(set(scores)) == len(scores)


SMALL_SPACE = SearchSpace(micro_batch=(1, 2), sam2_resolution=(512, 1024), lora_rank=(16, 128),
                          reduce_bucket_size=(50_000_000, 500_000_000), allgather_bucket_size=(500_000_000,))


@pytest.mark.parametrize("model,num_gpus,vram", [("sa2va-8b", 4, 24.0), ("sa2va-1b", 2, 24.0)])
def test_pruned_sweep_matches_brute_force(model, num_gpus, vram):
    """Every candidate of a small space estimated directly: same feasible set, same front."""
    base = plan_from_flags(BASELINE)
    profile = load_profile(model)
    exhaustive = run_search(profile, base, num_gpus=num_gpus, vram_gib=vram, host_ram_gib=128, space=SMALL_SPACE, exhaustive=True)
    fast = run_search(profile, base, num_gpus=num_gpus, vram_gib=vram, host_ram_gib=128, space=SMALL_SPACE)
    # brute force: the same plan construction, every candidate estimated, no lattice
    builder = _Builder(profile, exhaustive.base_plan, hardware=exhaustive.base_plan.hardware, space=SMALL_SPACE)
    brute = []
    for (zero, offload), ckpt, mb, res, rank, dec, rb, ab, ov in itertools.product(
            SMALL_SPACE.zero_offload, SMALL_SPACE.checkpointing, SMALL_SPACE.micro_batch, SMALL_SPACE.sam2_resolution,
            SMALL_SPACE.lora_rank, SMALL_SPACE.decoder_trained, SMALL_SPACE.reduce_bucket_size,
            SMALL_SPACE.allgather_bucket_size, SMALL_SPACE.overlap_comm):
        plan = builder.plan(Knobs(zero, offload, ckpt, mb, res, rank, dec, rb, ab, ov))
        result = estimate(profile, plan)
        if result.verdict is Verdict.FITS and result.host_fits:
            brute.append(plan.name)
    assert sorted(c.name for c in exhaustive.feasible) == sorted(brute)
    assert [c.name for c in fast.front] == [c.name for c in exhaustive.front] == [c.name for c in pareto_front(exhaustive.feasible)]


def test_nothing_fits_names_the_smallest_peak():
    profile = load_profile("sa2va-26b")
    result = run_search(profile, plan_from_flags(None), num_gpus=1, vram_gib=8.0, host_ram_gib=64)
    assert not result.front and result.smallest is not None
    assert result.smallest.estimate.device_bytes > gib_to_bytes(8.0) or not result.smallest.estimate.host_fits
    assert result.stats.candidates >= 10_000


def test_search_cli_json(tmp_path):
    result = CliRunner().invoke(_app(), ["search", "--gpus", "4", "--vram", "24", "--plan", BASELINE,
                                         "--format", "json", "--out", str(tmp_path), "--top", "3"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["evaluated"] >= 10_000
    assert 1 <= len(document["plans"]) <= 3
    assert all(p["verdict"] == "fits" and p["device_bytes"] <= p["vram_bytes"] for p in document["plans"])
    assert (tmp_path / "search.json").exists()


def test_search_cli_table_writes_report_and_charts(tmp_path):
    result = CliRunner().invoke(_app(), ["search", "--gpus", "4", "--gpu", "rtx-3090", "--plan", BASELINE,
                                         "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "candidates evaluated" in result.stdout and (tmp_path / "search.md").exists()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "search-memory.png").read_bytes()[:4] == b"\x89PNG"


def test_search_cli_says_why_nothing_fits(tmp_path):
    result = CliRunner().invoke(_app(), ["search", "--gpus", "1", "--vram", "8", "-m", "sa2va-26b",
                                         "--host-ram", "64", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no plan fits on 1 x 8 GiB: the smallest achievable peak is" in result.stdout
    assert "dominated by" in result.stdout


@pytest.mark.parametrize("args,needle", [
    (["search", "--gpus", "4"], "--vram"),
    (["search", "--gpus", "4", "--gpu", "rtx-3080"], "closest"),
    (["search", "--gpus", "4", "--vram", "-3"], "--vram"),
    (["search", "--gpus", "4", "--vram", "24", "--plan", "no-such-plan"], "known plans"),
])
def test_search_bad_input_is_one_line(tmp_path, args, needle):
    result = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_gpu_catalogue_lookup():
    assert get_gpu("RTX 3090").name == "rtx-3090"
    assert get_gpu("NVIDIA H100 80GB HBM3").name == "h100-sxm"
    with pytest.raises(ValueError, match="closest"):
        get_gpu("a100-8gb")


def test_the_search_counts_clear_fits_unless_told_otherwise():
    """With the shipped calibration (tight_band > 0) a feasible plan fits clear of the band; --allow-tight
    (allow_tight) adds the plans that fit only within it. Brute force over the small space decides both."""
    from memplan.spec.loading import load_calibration

    calibration = load_calibration()
    assert calibration.tight_band > 0
    base = plan_from_flags(BASELINE)
    profile = load_profile("sa2va-1b")
    clear = run_search(profile, base, num_gpus=2, vram_gib=24.0, host_ram_gib=128, space=SMALL_SPACE,
                       calibration=calibration, exhaustive=True)
    tight = run_search(profile, base, num_gpus=2, vram_gib=24.0, host_ram_gib=128, space=SMALL_SPACE,
                       calibration=calibration, exhaustive=True, allow_tight=True)
    assert all(c.estimate.clear_fit for c in clear.feasible)
    assert all(c.estimate.fits for c in tight.feasible)
    names = {c.name for c in clear.feasible}
    assert names < {c.name for c in tight.feasible}, "the space has plans within the band"
    assert {c.name for c in tight.feasible if not c.estimate.tight} == names
