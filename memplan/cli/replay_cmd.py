"""``memplan replay TRACE``: the recorded step (``memplan probe --trace-out``) served by a replay of
PyTorch's caching allocator under each card's limit (memplan.planning.replay)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from enum import Enum

from memplan.cli.options import console, user_errors


class ReplayFormat(str, Enum):
    table = "table"
    json = "json"


DEFAULT_SETTINGS = ("default", "max_split_size_mb:512")


def _cards(names: list[str] | None, device_total: int | None):
    """The caps to replay on: those named, else every catalogued card smaller than the probing one."""
    from memplan.spec.cards import parse_vram_cap
    from memplan.spec.gpus import catalogue

    if names:
        return [(name, parse_vram_cap(name)) for name in names]
    cards = [card for card in catalogue() if card.cuda_total_bytes and
             (device_total is None or card.cuda_total_bytes < int(device_total))]
    return [(card.name, parse_vram_cap(card.name)) for card in sorted(cards, key=lambda c: c.cuda_total_bytes)]


def _settings(values: list[str] | None) -> list[int | None]:
    from memplan.planning.replay import max_split_bytes_of

    return [None if value.strip() == "default" else max_split_bytes_of(value) for value in values or DEFAULT_SETTINGS]


def _the_trace(paths: list[Path], text_len: int | None):
    """One trace as given, or, with --text-len, the plan's trace at that length synthesized from two or more
    traces of it at other lengths (memplan.planning.trace_family), with the family's size laws."""
    from memplan.planning.trace_family import align, laws, synthesize
    from memplan.spec.errors import InputError
    from memplan.spec.trace import read_trace

    traces = [read_trace(path) for path in paths]
    if text_len is None:
        if len(traces) > 1:
            raise InputError(f"trace: {len(traces)} traces given without --text-len (several traces of one plan "
                             "at other lengths are replayed at the length --text-len names)")
        return traces[0], None
    if len(traces) < 2:
        raise InputError(f"--text-len={text_len}: needs two or more traces of the plan at other sequence lengths")
    family = align(traces)
    return synthesize(family, tokens=text_len), {"tokens": list(family.tokens), "run_ids": list(family.run_ids),
                                                  "text_len": text_len, "laws": laws(family)}


def family_line(family: dict) -> str:
    """Where a synthesized trace came from, in one line."""
    laws = family["laws"]
    lo, hi = min(family["tokens"]), max(family["tokens"])
    where = "between" if lo <= family["text_len"] <= hi else "beyond"
    return (f"synthesized at {family['text_len']} tokens ({where} the traced {', '.join(map(str, family['tokens']))}): "
            f"request sizes constant {laws['constant']}, proportional to the length {laws['proportional']}, to its "
            f"square {laws['quadratic']}, other {laws['polynomial']}; no addresses carried over")


BEYOND_RUNGS = 8  # rungs replayed past the first OOM, to show where the verdict flips back (it is not monotone)


def _longest(paths: list[Path], *, cards: list[str] | None, settings, step: int, start: int | None, stop: int | None,
             output_format: "ReplayFormat") -> None:
    """--longest: per card and allocator setting, the longest length on the ladder up to which every rung fits,
    from two or more traces of one plan at lengths the user's card trains at (memplan.planning.trace_family)."""
    from memplan.planning.replay import allocator_limit
    from memplan.planning.trace_family import align, ladder, laws, scan_lengths
    from memplan.report.replay import longest_document, longest_table
    from memplan.spec.errors import InputError
    from memplan.spec.trace import read_trace

    if len(paths) < 2:
        raise InputError("--longest: needs two or more traces of the plan at other sequence lengths")
    family = align([read_trace(path) for path in paths])
    caps = _cards(cards, family.base.header.get("device_total_bytes"))
    start = start if start is not None else min(family.tokens)
    stop = stop if stop is not None else 4 * max(family.tokens)
    lengths = ladder(start=start, stop=stop, step=step)
    scans = [(name, scan_lengths(family, lengths, limit_bytes=allocator_limit(family.base, cap),
                                 max_split_bytes=setting, beyond=BEYOND_RUNGS))
             for name, cap in caps for setting in settings]
    if output_format is ReplayFormat.json:
        typer.echo(json.dumps(longest_document(family=family, laws=laws(family), scans=scans, step=step), indent=2))
        return
    out = console()
    header = family.base.header
    out.print(f"{header.get('model')}: traced at {', '.join(map(str, family.tokens))} tokens; each length from {start} "
              f"in steps of {step} synthesized and replayed (no addresses carried over), up to {BEYOND_RUNGS} rungs "
              "past the first that runs out", markup=False)
    out.print(longest_table(scans, traced=family.tokens, title="memplan replay --longest: the longest sequence each "
                            "card trains"))
    beyond = [name for name, scan in scans if (scan.longest or 0) > max(family.tokens)]
    if beyond:
        out.print(f"note: beyond the longest traced length ({max(family.tokens)}) on {', '.join(sorted(set(beyond)))}: "
                  "the sizes there are extrapolated; trace nearer the answer to confirm it", markup=False)


@user_errors
def replay(
    *,
    trace: list[Path] = typer.Argument(..., help="A trace written by `memplan probe --trace-out FILE`; with "
                                       "--text-len, two or more traces of one plan at other sequence lengths."),
    text_len: Optional[int] = typer.Option(
        None, "--text-len", help="Replay the plan at this sequence length, its trace synthesized from the traces "
        "given (one plan at two or more other lengths: trace lengths that fit the card you have)."),
    card: Optional[list[str]] = typer.Option(
        None, "--card", help="A card name (rtx-3090) or GiB as CUDA reports them, as --vram-cap takes; repeat for "
        "several. Default: every catalogued card smaller than the one probed."),
    alloc_conf: Optional[list[str]] = typer.Option(
        None, "--alloc-conf", help="Allocator settings to replay: default, or max_split_size_mb:N; repeat for "
        "several. Default: default and max_split_size_mb:512."),
    longest: bool = typer.Option(False, "--longest", help="With two or more traces of one plan at other lengths: the "
                                 "longest sequence each card trains, every length up to it replayed at --step."),
    step: int = typer.Option(64, "--step", help="With --longest: tokens between the lengths replayed."),
    start: Optional[int] = typer.Option(None, "--from", help="With --longest: the first length replayed (default: "
                                        "the shortest traced)."),
    stop: Optional[int] = typer.Option(None, "--to", help="With --longest: the last length replayed (default: 4x "
                                       "the longest traced)."),
    smallest: bool = typer.Option(True, "--smallest/--no-smallest", help="Also bisect for the smallest allocator "
                                  "limit each setting fits in."),
    output_format: ReplayFormat = typer.Option(ReplayFormat.table, "--format", "-f", help="table or json."),
) -> None:
    """Replay a probe's allocation trace on other cards: fits or OOM, per card and allocator setting."""
    from memplan.planning.replay import (
        allocator_limit, fidelity, replay as replay_trace, reproduces, setting_label, smallest_limit,
    )
    from memplan.report.replay import CardReplay, fidelity_line, replay_document, replay_table
    from memplan.spec.errors import InputError
    from memplan.spec.units import format_gib

    if longest:
        if text_len is not None:
            raise InputError(f"--text-len={text_len}: give --text-len or --longest, not both")
        _longest(trace, cards=card, settings=_settings(alloc_conf), step=step,
                 start=start, stop=stop, output_format=output_format)
        return
    the_trace, family = _the_trace(trace, text_len)
    settings = _settings(alloc_conf)
    caps = _cards(card, the_trace.header.get("device_total_bytes"))
    unlimited, measured = fidelity(the_trace)
    reproduced = reproduces(unlimited, measured)
    rows = [CardReplay(card=name, replay=replay_trace(the_trace, limit_bytes=allocator_limit(the_trace, cap),
                                                      max_split_bytes=setting))
            for name, cap in caps for setting in settings]
    least = {}
    if smallest:
        for setting in settings:
            found = smallest_limit(the_trace, max_split_bytes=setting, unlimited=unlimited)
            least[setting_label(setting)] = found
    if output_format is ReplayFormat.json:
        document = replay_document(header=the_trace.header, rows=rows, unlimited=unlimited, measured=measured,
                                   reproduced=reproduced, smallest=least)
        typer.echo(json.dumps({**document, "synthesized": family}, indent=2))
        return
    out = console()
    header = the_trace.header
    out.print(f"trace of {header.get('model')} (run {header.get('run_id')}, {header.get('gpu_name')}): "
              f"{the_trace.requests} requests", markup=False)
    if family is not None:
        out.print(family_line(family), markup=False)
    else:
        out.print(fidelity_line(unlimited=unlimited, measured=measured, reproduced=reproduced), markup=False)
    if the_trace.addresses is None and family is None:
        out.print("note: this trace kept no segment addresses (recorded before they were), so ties between equal-sized "
                  "free blocks may go otherwise than on the card (docs/methodology.md 6b)", markup=False)
    if header.get("ring_full") or (header.get("measured") or {}).get("num_alloc_retries"):
        out.print("warning: the trace's ring buffer filled or the run retried allocations; its start or its "
                  "releases may be missing", markup=False)
    out.print(replay_table(rows, title="memplan replay: the recorded step on each card"))
    for setting, found in least.items():
        out.print(f"smallest allocator limit it fits in ({setting}): {format_gib(found)} GiB", markup=False)
