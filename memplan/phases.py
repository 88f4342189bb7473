"""Memory by phase: the estimators' terms summed at the moments a training step peaks.

For each phase (init, forward, backward, optimizer step) a few candidate moments are listed, each a
list of (component, category, bytes) terms; the phase's peak is the largest moment, and the step's
peak is the largest phase. Order of the forward follows the Sa2VA wiring the probe runs: vision,
projector, LLM and its loss, seg head, SAM2 image encoder (no graph), mask decoder and its loss.
Optimizer state and masters count in every phase: the peak is taken over steps >= 2, once the
first step has created them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from memplan.estimators import activations as act
from memplan.estimators import buffers, gradients, optimizer, weights
from memplan.estimators.context import Context
from memplan.vocabulary import Category, Component, Phase


class Term(NamedTuple):
    """Bytes of one memory category of one component at one moment (a tuple: built by the
    thousand per second in `memplan search`)."""

    component: Component
    category: Category
    bytes: int


class Group(NamedTuple):
    """Terms that appear together in several moments, with their sum computed once. The terms
    are kept as plain (component, category, bytes) tuples; Moment.terms makes them Terms."""

    terms: tuple[tuple[Component, Category, int], ...]
    total: int


class Moment(NamedTuple):
    label: str
    groups: tuple[Group, ...]
    total: int

    @property
    def terms(self) -> tuple[Term, ...]:
        return tuple(Term._make(t) for g in self.groups for t in g.terms)


@dataclass(frozen=True)
class PhaseMemory:
    phase: Phase
    moment: Moment  # the largest moment of the phase

    @property
    def total(self) -> int:
        return self.moment.total


def _group(*items: tuple[Component, Category, int]) -> Group:
    terms = tuple([item for item in items if item[2]])
    return Group(terms, sum([t[2] for t in terms]))


def _moment(label: str, *groups: Group) -> Moment:
    return Moment(label, groups, sum([g.total for g in groups]))


def _memo(fn):
    """Memoize a group per Context (each phase reuses the same states and activations)."""

    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(ctx: Context, *args):
        key = (name, *args) if args else name
        try:
            return ctx.cache[key]
        except KeyError:
            value = ctx.cache[key] = fn(ctx, *args)
            return value

    return wrapper


@_memo
def _weights(ctx: Context) -> Group:
    return _group(*[item for c in ctx.parts for item in (
        (c, Category.WEIGHTS, weights.frozen_weight_bytes(ctx, c)),
        (c, Category.TRAINABLE_WEIGHTS, weights.trainable_weight_bytes(ctx, c)))])


@_memo
def _optimizer_states(ctx: Context) -> Group:
    """Masters and optimizer state: present in every phase from the first step on."""
    return _group(*[item for c in ctx.parts for item in (
        (c, Category.MASTER_WEIGHTS, optimizer.master_weight_bytes(ctx, c)),
        (c, Category.OPTIMIZER_STATE, optimizer.optimizer_state_bytes(ctx, c)))])


@_memo
def _masters(ctx: Context) -> Group:
    return _group(*[(c, Category.MASTER_WEIGHTS, optimizer.master_weight_bytes(ctx, c)) for c in ctx.parts])


@_memo
def _all_gradients(ctx: Context) -> Group:
    return _group(*[(c, Category.GRADIENTS, gradients.gradient_bytes(ctx, c)) for c in ctx.parts])


@_memo
def _persistent_gradients(ctx: Context) -> Group:
    """Gradient storage alive outside backward and step. None: plain PyTorch frees param.grad
    (zero_grad set_to_none), and the H100 probes show DeepSpeed ZeRO-0/1/2/3 forward peaks without
    their gradient partitions or BF16_Optimizer accumulators (released after each step)."""
    return EMPTY


@_memo
def _step_gradients(ctx: Context) -> Group:
    """Gradients alive at the end of backward and through the step: all of them (plain PyTorch,
    ZeRO-0's fp32 accumulators, ZeRO-1), or this rank's partition (ZeRO-2/3)."""
    return _all_gradients(ctx)


@_memo
def _gathered(ctx: Context) -> Group:
    """ZeRO-3's all-gathered parameters: live while modules run (forward, backward)."""
    return _group((Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.zero3_gathered_bytes(ctx)))


@_memo
def _buckets(ctx: Context) -> Group:
    """ZeRO-1/2 gradient buckets: allocated in backward and released at its end (the H100 probes
    show forward and step peaks without them, reports/probes/). ZeRO-3 allocates its flat reduce
    bucket at initialize and keeps it: counted in every phase (_persistent_buckets)."""
    if ctx.zero_stage == 3:
        return EMPTY
    return _group((Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.ipg_bucket_bytes(ctx)))


@_memo
def _persistent_buckets(ctx: Context) -> Group:
    if ctx.zero_stage != 3:
        return EMPTY
    return _group((Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.ipg_bucket_bytes(ctx)))


ACTIVATION_ORDER = (
    (Component.VISION, act.vision_activation_bytes),
    (Component.PROJECTOR, act.projector_activation_bytes),
    (Component.LLM, lambda c: act.llm_activation_bytes(c) + act.logits_saved_bytes(c)),
    (Component.SEG_HEAD, act.seg_head_activation_bytes),
    (Component.SAM2_ENCODER, lambda c: act.sam2_feature_bytes(c) if act.needs_graph(c, Component.SAM2_DECODER) else 0),
    (Component.SAM2_DECODER, act.sam2_decoder_activation_bytes),
)


@_memo
def _activation_items(ctx: Context) -> list[tuple[Component, Category, int]]:
    return [(c, Category.ACTIVATIONS, fn(ctx) if c in ctx.parts else 0) for c, fn in ACTIVATION_ORDER]


@_memo
def _activations(ctx: Context, upto: Component | None = None) -> Group:
    """Saved activations of the components run so far (forward order), up to and including `upto`."""
    items = _activation_items(ctx)
    stop = next((i for i, (c, _) in enumerate(ACTIVATION_ORDER) if c is upto), len(items) - 1)
    return _group(*items[: stop + 1])


def _transient(component: Component, num_bytes: int) -> Group:
    return _group((component, Category.TRANSIENT, num_bytes))


EMPTY = Group((), 0)


def init_phase(ctx: Context) -> PhaseMemory:
    """After the model build and engine initialize. ZeRO-0's BF16_Optimizer creates its fp32 masters,
    fp32 gradient accumulators and the optimizer state there (initialize_optimizer_states); ZeRO-1/2/3
    create masters at initialize and optimizer state at the first step."""
    zero0 = ctx.is_deepspeed and ctx.zero_stage == 0 and ctx.training
    moment = _moment(
        "after deepspeed.initialize" if ctx.is_deepspeed else "after model build",
        _weights(ctx), _transient(Component.RUNTIME, buffers.init_transient_bytes(ctx)),
        _all_gradients(ctx) if zero0 else EMPTY, _optimizer_states(ctx) if zero0 else _masters(ctx),
        _persistent_buckets(ctx),
    )
    return PhaseMemory(Phase.INIT, moment)


def _states(ctx: Context) -> tuple[Group, ...]:
    """What every forward and backward moment holds: weights, optimizer state, gathered parameters."""
    return (_weights(ctx), _optimizer_states(ctx), _gathered(ctx), _persistent_buckets(ctx))


def forward_phase(ctx: Context) -> PhaseMemory:
    states = (*_states(ctx), _persistent_gradients(ctx))
    moments = []
    if Component.VISION in ctx.parts:
        moments.append(_moment("vision tower", *states, _transient(Component.VISION, act.vision_forward_transient(ctx))))
    if Component.LLM in ctx.parts:
        moments.append(_moment("LLM loss (logits)", *states, _activations(ctx, Component.LLM),
                               _transient(Component.LLM, act.llm_forward_transient(ctx))))
    if Component.SAM2_ENCODER in ctx.parts:
        moments.append(_moment("SAM2 image encoder", *states, _activations(ctx, Component.SEG_HEAD),
                               _transient(Component.SAM2_ENCODER, act.sam2_encoder_transient(ctx))))
    moments.append(_moment("end of forward", *states, _activations(ctx)))
    return PhaseMemory(Phase.FORWARD, max(moments, key=lambda m: m.total))


def backward_phase(ctx: Context) -> PhaseMemory:
    states = (*_states(ctx), _buckets(ctx))
    persistent = _persistent_gradients(ctx)
    moments = [_moment("start of backward", *states, persistent, _activations(ctx))]
    if Component.LLM in ctx.parts and act.needs_graph(ctx, Component.LLM):
        head_grad = _group((Component.LLM, Category.GRADIENTS, buffers.lm_head_grad_bytes(ctx)))
        moments.append(_moment("LLM loss backward", *states, persistent if persistent.total else head_grad,
                               _activations(ctx, Component.LLM),
                               _transient(Component.LLM, act.llm_backward_transient(ctx))))
    moments.append(_moment("end of backward", *states, _step_gradients(ctx), _activations(ctx, Component.PROJECTOR),
                           _group((Component.RUNTIME, Category.TRANSIENT, buffers.ddp_bucket_bytes(ctx)))))
    return PhaseMemory(Phase.BACKWARD, max(moments, key=lambda m: m.total))


def optimizer_phase(ctx: Context) -> PhaseMemory:
    moment = _moment(
        "optimizer step", _weights(ctx), _optimizer_states(ctx), _step_gradients(ctx), _persistent_buckets(ctx),
        _group((Component.RUNTIME, Category.TRANSIENT, buffers.step_transient_bytes(ctx) + buffers.ddp_bucket_bytes(ctx))),
    )
    return PhaseMemory(Phase.OPTIMIZER_STEP, moment)


def inference_forward(ctx: Context) -> PhaseMemory:
    states = (_weights(ctx), _gathered(ctx))
    moments = [_moment("weights", *states)]
    if Component.VISION in ctx.parts:
        moments.append(_moment("vision tower", *states, _transient(Component.VISION, act.vision_forward_transient(ctx))))
    if Component.LLM in ctx.parts:
        moments.append(_moment("LLM logits", *states, _transient(Component.LLM, act.llm_forward_transient(ctx))))
    if Component.SAM2_ENCODER in ctx.parts:
        moments.append(_moment("SAM2 image encoder", *states,
                               _transient(Component.SAM2_ENCODER, act.sam2_encoder_transient(ctx))))
    return PhaseMemory(Phase.FORWARD, max(moments, key=lambda m: m.total))


def all_phases(ctx: Context) -> list[PhaseMemory]:
    if not ctx.training:
        return [init_phase(ctx), inference_forward(ctx)]
    return [init_phase(ctx), forward_phase(ctx), backward_phase(ctx), optimizer_phase(ctx)]
