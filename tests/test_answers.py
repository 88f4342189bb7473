"""Answers that say what to do, with one number story, at any terminal width (issue 13: points 3, 4, 6, 7)."""

import json
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.cli.names import resolve_profile
from memplan.spec.flags import plan_from_flags
from memplan.estimate.peak import estimate
from memplan.planning.advice import advise
from memplan.report import render, story
from memplan.spec.loading import load_calibration
from memplan.spec.units import GIB

runner = CliRunner()
QUICK_START = ["estimate", "--gpus", "4", "--vram", "24", "--res", "512"]
WIDTHS = (80, 120, 200)
NUMBER = re.compile(r"\d+\.\d\d")


def _quick_start():
    plan = plan_from_flags(None, gpus=4, vram=24, res=512, host_ram=256)
    profile = resolve_profile(None, plan)
    calibration = load_calibration()
    result = estimate(profile, plan, calibration)
    return profile, plan, calibration, result


def _render(renderable, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("plan_name, gpus", [("sa2va-official", 4), ("sa2va-official", 1), ("seed/baseline", 4),
                                             ("seed/plan-d", 4)])
def test_rows_sum_to_the_number_the_verdict_uses(plan_name, gpus):
    plan = plan_from_flags(plan_name, gpus=gpus, host_ram=256)
    result = estimate(resolve_profile(None, plan), plan, load_calibration())
    rows = story.story_rows(result)
    assert rows["allocated_terms_bytes"] + sum(r["bytes"] for r in rows["overheads"]) == result.needed_bytes
    assert rows["needed_bytes"] == result.needed_bytes
    assert sum(t.bytes for t in result.breakdown()) == result.peak.total
    labels = [r["row"] for r in rows["overheads"]]
    assert "CUDA context" in labels and ("NCCL communicator" in labels) == (gpus > 1 or result.deepspeed)


def test_rows_sum_across_nodes_too():
    plan = plan_from_flags(None, gpus=8, nodes=4, zero=3, host_ram=256)
    result = estimate(resolve_profile(None, plan), plan, load_calibration())
    rows = story.story_rows(result)
    assert result.nccl_extra_bytes > 0
    assert rows["allocated_terms_bytes"] + sum(r["bytes"] for r in rows["overheads"]) == result.needed_bytes


def test_the_table_total_is_the_verdicts_number():
    *_, result = _quick_start()
    text = _render(render.estimate_table(result, width=200), 200)
    needed_row = next(line for line in text.splitlines() if line.strip().strip("│").strip().startswith("needed"))
    assert NUMBER.findall(needed_row)[-1] == f"{result.needed_bytes / GIB:.2f}"
    margin = f"{-result.headroom_bytes / GIB:.2f}"
    assert f"OOM by {margin} GiB (needs {result.needed_bytes / GIB:.2f} of 24.00 GiB per GPU)" in text
    views = " ".join(text.split("views: ")[1].split("phases")[0].split())
    assert "allocated" in views and "reserved" in views and "device" in views and "needed decides the verdict" in views


def test_estimate_on_oom_prints_the_three_cheapest_changes_that_fit():
    profile, plan, calibration, result = _quick_start()
    advice = advise(profile, plan, calibration, result=result)
    lines = story.advice_lines(advice)
    assert lines[0].startswith("the 3 cheapest changes that fit")
    assert len(lines) == 4
    for line, change in zip(lines[1:], story.cheapest(advice)):
        assert change.fits
        saved = (result.needed_bytes - change.estimate.needed_bytes) / GIB
        assert f"saves {saved:.2f} GiB" in line and "costs " in line and "gives up " in line
    ranked = story.cheapest(advice)
    keys = [(c.fidelity_loss, c.tokens_lost, c.needs_hardware, c.slowdown) for c in ranked]
    assert keys == sorted(keys)
    cli = runner.invoke(app, [*QUICK_START, "--host-ram", "256"])
    assert cli.exit_code == 0 and "the 3 cheapest changes that fit" in cli.output
    assert all(f"  {i}. " in cli.output for i in (1, 2, 3))


def test_json_carries_the_advice_and_the_rows():
    cli = runner.invoke(app, [*QUICK_START, "--host-ram", "256", "--format", "json"])
    data = json.loads(cli.output)
    assert data["verdict"] == "oom" and len(data["advice"]) == 3
    assert all(a["needed_bytes"] <= data["vram_bytes"] and a["saves_bytes"] > 0 for a in data["advice"])
    rows = data["needed_rows"]
    assert rows["allocated_terms_bytes"] + sum(r["bytes"] for r in rows["overheads"]) == data["needed_bytes"]


def test_a_plan_that_fits_gets_no_advice():
    cli = runner.invoke(app, ["estimate", "--gpus", "4", "--vram", "24", "--zero", "3", "--host-ram", "256"])
    assert cli.exit_code == 0 and "FITS with" in cli.output and "cheapest changes" not in cli.output


@pytest.mark.parametrize("args, code", [
    ([*QUICK_START, "--host-ram", "256", "--exit-code"], 1),
    ([*QUICK_START, "--host-ram", "256"], 0),
    (["estimate", "--gpus", "4", "--vram", "24", "--zero", "3", "--host-ram", "256", "--exit-code"], 0),
    (["estimate", "--gpus", "4", "--vram", "24", "--zero", "3", "--offload", "all", "--host-ram", "8",
      "--exit-code"], 1),  # the GPU fits, the host RAM does not
    (["search", "--gpus", "1", "--vram", "4", "-m", "sa2va-26b", "--exit-code"], 1),
    (["search", "--gpus", "1", "--vram", "4", "-m", "sa2va-26b"], 0),
    (["compare", "plans/seed/baseline.yaml", "--exit-code"], 1),
    (["compare", "--exit-code"], 0),
])
def test_exit_code_makes_oom_and_no_plan_fits_exit_1(args, code):
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output


def _lines_fit(text: str, width: int) -> bool:
    return all(len(line) <= width for line in text.splitlines())


@pytest.mark.parametrize("width", WIDTHS)
def test_the_estimate_table_fits_the_width_and_keeps_every_number(width):
    profile, plan, calibration, result = _quick_start()
    text = _render(render.estimate_table(result, width=width, advice=story.advice_lines(
        advise(profile, plan, calibration, result=result))), width)
    assert _lines_fit(text, width) and "…" not in text
    table = text.split("OOM by")[0]
    assert f"{result.needed_bytes / GIB:.2f}" in table
    for label in ("allocator", "CUDA context", "NCCL", "needed"):
        assert label in table
    if width < render.WIDE_COLUMNS:
        assert "grad+opt" in table and "master" not in table
    else:
        assert "master" in table and "transient" in table


def test_wide_shows_every_column_at_80():
    *_, result = _quick_start()
    text = _render(render.estimate_table(result, width=80, wide=True), 200)
    assert "master" in text and "transient" in text


def _compare_text(width: int, *args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_fits_the_width_and_says_what_each_plan_saves(width):
    text = _compare_text(width, "compare")
    assert _lines_fit(text, width) and "…" not in text
    saves = {p["plan"]: p["saves_bytes"] for p in json.loads(_compare_text(200, "compare", "--format", "json"))["plans"]}
    assert saves["baseline"] is None and saves["plan-b"] > 10 * GIB  # ZeRO-3 + offload against the baseline
    rows = [line for line in text.splitlines() if re.search(r"\bplan-[abcd]\b|\bbaseline\b", line) and NUMBER.search(line)]
    for name in ("plan-a", "plan-b", "plan-c", "plan-d"):
        line = next(line for line in rows if name in line)
        assert f"{saves[name] / GIB:+.2f}" in line, (name, line)
    if width >= 180:
        assert "top advice" in text and "model" in text
    else:
        assert "baseline: gives up nothing; top advice: " in text.replace("\n", " ")


@pytest.mark.parametrize("width", WIDTHS)
def test_search_labels_long_names_with_a_legend(width):
    text = _compare_text(width, "search", "--gpus", "4", "--vram", "24", "-m", "sa2va-8b", "--host-ram", "128",
                         "--top", "3")
    assert _lines_fit(text, width)
    if width < 180:
        assert re.search(r"^\S*\s*#1\s", text, re.M) and re.search(r"^#1 z\d-", text, re.M)
        names = re.findall(r"^#\d (\S+):", text, re.M)
        assert len(names) == len(set(names)) >= 2 and all(len(n) > 14 for n in names)
    else:
        assert "#1" not in text


def test_search_memory_chart_has_one_bar_per_plan_and_distinct_legends():
    pytest.importorskip("matplotlib")
    from memplan.report import charts
    from memplan.planning.evaluate import evaluate
    from memplan.planning.search import search

    profile = resolve_profile("sa2va-8b")
    base = plan_from_flags(None, host_ram=128)
    result = search(profile, base, num_gpus=4, vram_gib=24, calibration=load_calibration())
    front = result.front[:4]
    assert len(front) >= 2 and len({c.name[:20] for c in front}) < len(front)  # the names the old chart merged
    rows = [evaluate(profile, c.plan, calibration=load_calibration(), reference=result.base_plan, result=c.estimate,
                     step=c.step, with_advice=False) for c in front]
    figure = charts.memory_figure(rows)
    axes = figure.axes[0]
    for container in axes.containers:
        assert sorted(round(bar.get_x() + bar.get_width() / 2, 3) for bar in container) == list(range(len(rows)))
    ticks = [t.get_text() for t in axes.get_xticklabels()]
    assert len(ticks) == len(rows) == len(set(ticks))
    legend = [t.get_text() for t in charts.phase_figure(rows).axes[0].get_legend().get_texts()]
    assert len(legend) == len(rows) == len(set(legend))


def test_the_printed_totals_add_up_to_the_printed_needed():
    for args in ([], ["--gpus", "1"], ["--plan", "plans/seed/plan-b.yaml"], ["-m", "sa2va-26b", "--zero", "3"]):
        plan = plan_from_flags(*(args[1:2] if args[:1] == ["--plan"] else [None]), host_ram=256,
                          **({"gpus": 1} if args == ["--gpus", "1"] else {}),
                          **({"zero": 3} if "--zero" in args else {}))
        result = estimate(resolve_profile(args[1] if args[:1] == ["-m"] else None, plan), plan, load_calibration())
        text = _render(render.estimate_table(result, width=200), 200)
        body = [line.strip("│ ").split("│") for line in text.splitlines() if line.startswith("│")]
        hundredths = lambda cell: round(float(cell) * 100) if cell.strip() else 0  # noqa: E731
        needed = next(row for row in body if row[0].strip() == "needed")
        others = [row for row in body if row[0].strip() != "needed"]
        assert sum(hundredths(row[-1]) for row in others) == hundredths(needed[-1]) == round(result.needed_bytes / GIB * 100)
        assert sum(hundredths(cell) for cell in needed[1:-1]) == hundredths(needed[-1])


def test_shown_parts_keep_the_sum():
    parts = [int(0.004 * GIB)] * 3 + [int(1.006 * GIB)]
    total = sum(parts)
    shown = story.shown_parts(parts, total)
    assert round(sum(float(s) for s in shown) * 100) == round(total / GIB * 100)
