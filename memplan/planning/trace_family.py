"""A plan's allocation trace at a sequence length it was not run at, from traces of the same plan at others.

A training step asks the caching allocator for the same requests in the same order whatever the sequence
length: the probes' traces of one plan at two lengths (replay-d and replay-e, 2026-12-07: four plans at
7,296-18,688 tokens, 77,697-140,371 events each) have the same requests and frees, one for one, and every request's
size is the same at both lengths, proportional to the length (activations, logits, gradients of them), to
its square (eager attention's s x s scores), or a constant plus a whole number of bytes per token; the rest
(a handful under 32 KiB) is a constant plus a fraction of a byte per token. So the sizes at a third length
follow from two traces, and the trace at that length can be replayed (memplan.planning.replay) without
running it: trace a plan at two lengths that fit the card you have, replay it at the length you want.

Frees that follow one another with no request between them may come in another order (a dict of gradients
emptied, a module's buffers dropped): the allocator ends such a run of frees in the same state whatever
their order, so the runs are compared as sets and the first trace's order is kept. Segment events (``S``,
``D``) and addresses belong to one run's driver and are not carried over: the synthesized trace replays with
rising addresses (memplan.estimate.caching_allocator). Pure: no torch.

``scan_lengths`` replays the family along a ladder of lengths under one allocator limit: the longest length a
card trains at, from traces of lengths it does. The verdict need not be monotone in the length (where the
blocks land decides: replay-f's scans flip back to "fits" above a first OOM), so the ladder is replayed rung by
rung, never bisected, and the lengths that fit again above the first OOM are reported, not trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from memplan.planning.replay import Replay, replay
from memplan.spec.errors import InputError
from memplan.spec.trace import ALLOC, FREE, RELEASE, Trace

REPLAYED = (ALLOC, FREE, RELEASE)


@dataclass(frozen=True)
class Law:
    """One request's size as a function of the sequence length n: ``name`` (constant, proportional,
    quadratic, polynomial) and the exact polynomial it is, as (n, size) points it passes through."""

    name: str
    points: tuple[tuple[int, int], ...]

    def at(self, tokens: int) -> int:
        """The size at ``tokens``, rounded to a byte, at least one."""
        if self.name == "constant":
            return self.points[0][1]
        if self.name in ("proportional", "quadratic"):
            n0, s0 = self.points[0]
            power = 1 if self.name == "proportional" else 2
            return max(1, round(Fraction(s0, n0**power) * tokens**power))
        return max(1, round(_lagrange(list(self.points), tokens)))


@dataclass(frozen=True)
class Family:
    """Traces of one plan at different sequence lengths, aligned request by request."""

    tokens: tuple[int, ...]  # each trace's sequence length, in the order given
    run_ids: tuple[str, ...]  # each trace's run id, in the same order
    base: Trace  # the trace whose event order the synthesized trace keeps (the first given)
    kinds: str
    blocks: list[int]
    streams: list[int]
    laws: list[Law | None]  # per event, its request's size law (None for frees and releases)


def trace_tokens(trace: Trace) -> int:
    """The sequence length a trace's plan ran at (its header's plan.inputs.text_tokens)."""
    try:
        return int(trace.header["plan"]["inputs"]["text_tokens"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"trace {trace.header.get('run_id', '?')}: its header names no plan.inputs.text_tokens "
                         "(a trace written by `memplan probe --trace-out`)") from None


def _replayed(trace: Trace) -> tuple[str, list[int], list[int], list[int]]:
    keep = [i for i, kind in enumerate(trace.kinds) if kind in REPLAYED]
    return ("".join(trace.kinds[i] for i in keep), [trace.blocks[i] for i in keep], [trace.sizes[i] for i in keep],
            [trace.streams[i] for i in keep])


def _plan_without_tokens(trace: Trace) -> dict[str, Any]:
    plan = dict(trace.header.get("plan") or {})
    plan["inputs"] = {k: v for k, v in (plan.get("inputs") or {}).items() if k != "text_tokens"}
    plan.pop("hardware", None)  # the card a trace ran on does not change the requests
    return plan


def _ordinals(kinds: str, blocks: list[int]) -> list[int]:
    """Each event's block as the ordinal of its request (block ids are one run's: compared by order)."""
    ordinal: dict[int, int] = {}
    out = []
    for kind, block in zip(kinds, blocks):
        if kind == ALLOC:
            ordinal[block] = len(ordinal)
        out.append(ordinal.get(block, -1) if kind != RELEASE else -1)
    return out


def _free_runs_match(kinds: str, mine: list[int], theirs: list[int]) -> int | None:
    """The first event index where two aligned traces differ, runs of consecutive frees compared as sets."""
    i = 0
    while i < len(kinds):
        if kinds[i] != FREE:
            if mine[i] != theirs[i]:
                return i
            i += 1
            continue
        j = i
        while j < len(kinds) and kinds[j] == FREE:
            j += 1
        if sorted(mine[i:j]) != sorted(theirs[i:j]):
            return i
        i = j
    return None


def align(traces: list[Trace]) -> Family:
    """Traces of one plan at two or more sequence lengths, checked to make the same requests in the same order:
    one-line InputError naming the first difference."""
    if len(traces) < 2:
        raise InputError("traces: give two or more traces of one plan at different sequence lengths")
    tokens = tuple(trace_tokens(t) for t in traces)
    if len(set(tokens)) < 2:
        raise InputError(f"traces: all at {tokens[0]} tokens; give traces of one plan at different sequence lengths")
    base = traces[0]
    kinds, blocks, base_sizes, streams = _replayed(base)
    base_ordinals = _ordinals(kinds, blocks)
    columns = [base_sizes]
    for trace in traces[1:]:
        name = trace.header.get("run_id", "?")
        same_plan = (trace.header.get("model"), _plan_without_tokens(trace)) == (base.header.get("model"),
                                                                                 _plan_without_tokens(base))
        if not same_plan:
            raise InputError(f"trace {name}: another model or plan than trace {base.header.get('run_id', '?')} "
                             "(only the sequence length may differ)")
        their_kinds, their_blocks, their_sizes, _ = _replayed(trace)
        if their_kinds != kinds:
            first = next((i for i, (a, b) in enumerate(zip(kinds, their_kinds)) if a != b),
                         min(len(kinds), len(their_kinds)))
            raise InputError(f"trace {name}: its requests differ from trace {base.header.get('run_id', '?')}'s at "
                             f"event {first} ({len(their_kinds)} events against {len(kinds)}): not one plan's step")
        differs = _free_runs_match(kinds, base_ordinals, _ordinals(their_kinds, their_blocks))
        if differs is not None:
            raise InputError(f"trace {name}: event {differs} frees another request than trace "
                             f"{base.header.get('run_id', '?')}'s: not one plan's step")
        columns.append(their_sizes)
    laws = [fit(list(zip(tokens, column))) if kind == ALLOC else None for kind, column in zip(kinds, zip(*columns))]
    return Family(tokens=tokens, run_ids=tuple(str(t.header.get("run_id", "?")) for t in traces), base=base,
                  kinds=kinds, blocks=blocks, streams=streams, laws=laws)


def fit(points: list[tuple[int, int]]) -> Law:
    """One request's size law from its (tokens, size) in each trace: the one-term law every point obeys
    exactly (constant; c x n; c x n^2), else the polynomial through them (a line through two lengths, a
    quadratic through the first three)."""
    distinct = sorted(set(points))
    n0, s0 = distinct[0]
    if all(s == s0 for _, s in distinct):
        return Law("constant", ((n0, s0),))
    for name, power in (("proportional", 1), ("quadratic", 2)):
        c = Fraction(s0, n0**power)
        if all(c * n**power == s for n, s in distinct):
            return Law(name, ((n0, s0),))
    by_tokens = dict(distinct)
    return Law("polynomial", tuple((n, by_tokens[n]) for n in sorted(by_tokens)[:3]))


def size_at(points: list[tuple[int, int]], tokens: int) -> int:
    """One request's size at ``tokens`` (fit's law), rounded to a byte, at least one."""
    return fit(points).at(tokens)


def _lagrange(points: list[tuple[int, int]], x: int) -> Fraction:
    total = Fraction(0)
    for i, (xi, yi) in enumerate(points):
        term = Fraction(yi)
        for j, (xj, _) in enumerate(points):
            if i != j:
                term *= Fraction(x - xj, xi - xj)
        total += term
    return total


def synthesize(family: Family, *, tokens: int) -> Trace:
    """The family's trace at ``tokens``: the base trace's events, each request sized by its law."""
    if tokens <= 0:
        raise InputError(f"--text-len={tokens}: must be a positive number of tokens")
    sizes = [law.at(tokens) if law is not None else 0 for law in family.laws]
    header = dict(family.base.header)
    plan = dict(header.get("plan") or {})
    plan["inputs"] = {**(plan.get("inputs") or {}), "text_tokens": tokens}
    sources = [{"run_id": run_id, "tokens": n} for run_id, n in zip(family.run_ids, family.tokens)]
    header.update(plan=plan, measured=None, run_id=f"{header.get('run_id', 'trace')}@{tokens}",
                  synthesized_from=sources)
    return Trace(header=header, kinds=family.kinds, blocks=list(family.blocks), sizes=sizes,
                 streams=list(family.streams), stream_ids=list(family.base.stream_ids), addresses=None)


def laws(family: Family) -> dict[str, int]:
    """How many requests follow each size law across the family (constant, proportional, quadratic, other)."""
    counts = {"constant": 0, "proportional": 0, "quadratic": 0, "polynomial": 0}
    for law in family.laws:
        if law is not None:
            counts[law.name] += 1
    return counts


@dataclass(frozen=True)
class LengthScan:
    """A family's synthesized traces replayed rung by rung up a ladder of lengths under one allocator limit."""

    limit_bytes: int | None
    max_split_bytes: int | None
    rows: tuple[tuple[int, Replay], ...]  # (tokens, its replay), ascending

    @property
    def first_oom(self) -> int | None:
        """The shortest length on the ladder that runs out (None: every rung replayed fits)."""
        return next((tokens for tokens, result in self.rows if not result.fits), None)

    @property
    def longest(self) -> int | None:
        """The longest rung below the first OOM: every rung up to it fits (None: the first rung runs out)."""
        first = self.first_oom
        fits = [tokens for tokens, result in self.rows if result.fits and (first is None or tokens < first)]
        return fits[-1] if fits else None

    @property
    def fits_again(self) -> tuple[int, ...]:
        """Rungs above the first OOM that fit (the verdict is not monotone in the length there)."""
        first = self.first_oom
        return () if first is None else tuple(t for t, result in self.rows if t > first and result.fits)


def ladder(*, start: int, stop: int, step: int, skip: tuple[int, ...] = ()) -> list[int]:
    """start, start + step, ... up to stop (inclusive), less the lengths in ``skip``; InputError on a bad range."""
    if step <= 0:
        raise InputError(f"--step={step}: must be a positive number of tokens")
    if start <= 0 or stop < start:
        raise InputError(f"--from={start} --to={stop}: give 0 < from <= to (tokens)")
    return [tokens for tokens in range(start, stop + 1, step) if tokens not in skip]


def scan_lengths(family: Family, lengths: list[int], *, limit_bytes: int | None, max_split_bytes: int | None = None,
                 beyond: int | None = None) -> LengthScan:
    """Replay the family's trace at each length (ascending) under ``limit_bytes``; with ``beyond``, stop that many
    rungs past the first OOM (None: replay every rung). Each rung is its own replay: synthesize, then
    memplan.planning.replay.replay."""
    rows: list[tuple[int, Replay]] = []
    past = None
    for tokens in sorted(lengths):
        result = replay(synthesize(family, tokens=tokens), limit_bytes=limit_bytes, max_split_bytes=max_split_bytes)
        rows.append((tokens, result))
        if past is not None:
            past += 1
        elif not result.fits:
            past = 0
        if beyond is not None and past is not None and past >= beyond:
            break
    return LengthScan(limit_bytes=limit_bytes, max_split_bytes=max_split_bytes, rows=tuple(rows))
