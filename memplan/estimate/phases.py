"""Memory by phase: the estimators' terms summed at the moments a training step peaks.

For each phase (init, forward, backward, optimizer step) a few candidate moments are listed, each a
list of (component, category, bytes) terms; the phase's peak is the largest moment, and the step's
peak is the largest phase. Order of the forward follows the Sa2VA wiring the probe runs: vision,
projector, LLM and its loss, seg head, SAM2 image encoder (no graph), mask decoder and its loss.
Optimizer state and masters count in every phase: the peak is taken over steps >= 2, once the
first step has created them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from memplan.estimate import activations as act
from memplan.estimate import buffers, fsdp, gradients, optimizer, weights
from memplan.estimate.context import Context
from memplan.spec.vocabulary import Category, Component, Phase


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
    total = 0
    for term in terms:
        total += term[2]
    return tuple.__new__(Group, (terms, total))


def _moment(label: str, *groups: Group) -> Moment:
    total = 0
    for group in groups:
        total += group[1]
    return tuple.__new__(Moment, (label, groups, total))


ACTIVATION_ORDER = (
    (Component.VISION, act.vision_activation_bytes),
    (Component.PROJECTOR, act.projector_activation_bytes),
    (Component.LLM, lambda c: act.llm_activation_bytes(c) + act.logits_saved_bytes(c)),
    (Component.SEG_HEAD, act.seg_head_activation_bytes),
    (Component.SAM2_ENCODER, lambda c: act.sam2_feature_bytes(c) if act.needs_graph(c, Component.SAM2_DECODER) else 0),
    (Component.SAM2_DECODER, act.sam2_decoder_activation_bytes),
)
EMPTY = Group((), 0)


class Shared:
    """The term groups that several moments share, computed once per estimate.

    weights: frozen + trainable parameters; optimizer: fp32 masters + optimizer state (present from
    the first step on); gradients: per GPU after backward (no gradient survives into the next
    forward: plain PyTorch sets them to None, and the H100 probes show ZeRO-0/1/2/3 forward peaks
    without partitions or BF16_Optimizer accumulators); buckets: ZeRO-1/2 gradient buckets, alive in
    backward only; persistent_buckets: ZeRO-3's reduce bucket, allocated at initialize and kept;
    gathered: ZeRO-3's gathered parameters; activations[c]: saved activations of the components run
    up to and including c, in forward order; layer_backward_activations: activations up to the LLM once
    the loss backward has released the logits' saved tensors.
    """

    __slots__ = ("weights", "masters", "optimizer", "gradients", "persistent_gradients", "kept", "buckets",
                 "persistent_buckets", "gathered", "activations", "layer_backward_activations", "loss_gathered",
                 "backward_gathered", "backward_held", "reduce_scatter", "reduce_scatter_activations")

    def __init__(self, ctx: Context) -> None:
        parts = ctx.parts
        self.weights = _group(*[item for c in parts for item in (
            (c, Category.WEIGHTS, weights.frozen_weight_bytes(ctx, c)),
            (c, Category.TRAINABLE_WEIGHTS, weights.trainable_weight_bytes(ctx, c)))])
        masters = [(c, Category.MASTER_WEIGHTS, optimizer.master_weight_bytes(ctx, c)) for c in parts]
        self.masters = _group(*masters)
        self.optimizer = _group(*masters, *[(c, Category.OPTIMIZER_STATE, optimizer.optimizer_state_bytes(ctx, c))
                                            for c in parts])
        self.gradients = _group(*[(c, Category.GRADIENTS, gradients.gradient_bytes(ctx, c)) for c in parts])
        self.persistent_gradients = self.gradients if buffers.zero3_persistent_gradients(ctx) else EMPTY
        # A loop's kept output lives from its forward until the next forward has returned (`out = model(...)`
        # rebinds only then): through backward, the step and the next forward (act.llm_kept_output_bytes).
        self.kept = _group((Component.LLM, Category.ACTIVATIONS, act.llm_kept_output_bytes(ctx)))
        bucket = _group((Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.ipg_bucket_bytes(ctx)))
        self.buckets, self.persistent_buckets = (EMPTY, bucket) if ctx.zero_stage == 3 else (bucket, EMPTY)
        self.gathered = _group((Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.zero3_gathered_bytes(ctx)),
                               (Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.hpz_secondary_bytes(ctx)))
        # ZeRO-3 from the end of forward: what the backward gathers again (buffers.zero3_backward_gathered_bytes)
        self.backward_held = _group(
            (Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.zero3_backward_gathered_bytes(ctx)),
            (Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.hpz_secondary_bytes(ctx)))
        # the moments that differ under FSDP2 (memplan.estimate.fsdp); elsewhere the shared groups
        self.loss_gathered, self.backward_gathered = self.gathered, self.backward_held
        self.reduce_scatter = self.reduce_scatter_activations = EMPTY
        items = [(c, Category.ACTIVATIONS, fn(ctx)) for c, fn in ACTIVATION_ORDER if c in parts]
        order = [c for c, _ in ACTIVATION_ORDER]
        self.activations = {}
        for upto in (Component.PROJECTOR, Component.LLM, Component.SEG_HEAD, Component.SAM2_DECODER):
            stop = order.index(upto)
            self.activations[upto] = _group(*[item for item in items if order.index(item[0]) <= stop])
        # the LLM's layers backward runs after the loss backward: autograd has released the loss node's saved
        # tensors (log_softmax's fp32 output; chunked: the hidden-state gradient), Node::release_variables,
        # torch/csrc/autograd/engine.cpp, called once a node ran without retain_graph
        self.layer_backward_activations = self.without_logits(ctx, self.activations[Component.LLM])
        if ctx.is_fsdp:  # FSDP2: which units are unsharded depends on the moment; reduce-scatter its own moment
            root = (Component.RUNTIME, Category.FSDP_BUFFERS, fsdp.root_unsharded_bytes(ctx))
            self.gathered = _group(
                root, (Component.RUNTIME, Category.FSDP_BUFFERS, fsdp.units_unsharded_bytes(ctx, after_forward=True)))
            self.loss_gathered = _group(root, (Component.RUNTIME, Category.FSDP_BUFFERS, fsdp.loss_unsharded_bytes(ctx)))
            self.backward_gathered = _group(
                root, (Component.RUNTIME, Category.FSDP_BUFFERS, fsdp.backward_start_unsharded_bytes(ctx)))
            self.buckets = EMPTY  # no reduce-scatter before the first unit's post-backward
            self.reduce_scatter = _group(
                (Component.RUNTIME, Category.FSDP_BUFFERS, fsdp.reduce_scatter_root_bytes(ctx)),
                (Component.RUNTIME, Category.FSDP_BUFFERS, fsdp.reduce_scatter_neighbour_bytes(ctx)),
                (Component.RUNTIME, Category.FSDP_BUFFERS, fsdp.reduce_scatter_bytes(ctx)))
            # after the loss backward: the logits' saved tensors are gone, the LLM's layer inputs remain
            self.reduce_scatter_activations = self.without_logits(ctx, self.activations[Component.SAM2_DECODER])
            if fsdp.root_reduces_largest(ctx):  # in the final callback, the graph has run: as at the end of backward
                self.reduce_scatter_activations = self.activations[Component.PROJECTOR]

    @staticmethod
    def without_logits(ctx: Context, group: Group) -> Group:
        """``group`` once the loss backward has run: the LLM's term less the logits' saved tensors."""
        llm_saved = act.logits_saved_bytes(ctx) if Component.LLM in ctx.parts else 0
        return _group(*[(c, cat, b - llm_saved if c is Component.LLM else b) for c, cat, b in group.terms])

    def states(self, gathered: Group | None = None) -> tuple[Group, ...]:
        """What every forward and backward moment holds (``gathered``: the moment's unsharded FSDP2
        units, when they differ from the shared group)."""
        return (self.weights, self.optimizer, self.gathered if gathered is None else gathered, self.persistent_buckets,
                self.persistent_gradients, self.kept)

    def gradients_after_backward(self) -> Group:
        """The gradients the end of backward adds (none beyond the states where they persist)."""
        return EMPTY if self.persistent_gradients is self.gradients else self.gradients


def _transient(component: Component, num_bytes: int) -> Group:
    if not num_bytes:
        return EMPTY
    return tuple.__new__(Group, (((component, Category.TRANSIENT, num_bytes),), num_bytes))


def init_phase(ctx: Context, s: Shared) -> PhaseMemory:
    """After the model build and engine initialize. ZeRO-0's BF16_Optimizer creates its fp32 masters,
    fp32 gradient accumulators and the optimizer state there (initialize_optimizer_states); ZeRO-1/2/3
    create masters at initialize and optimizer state at the first step.

    ZeRO-1/2 without offload has two moments (DeepSpeedZeroOptimizer.__init__, stage_1_and_2.py, in
    this order): the flatten, where the original parameters and their flat copy coexist and no master
    exists yet, and initialize_optimizer_states, where the flat parameters, the fp32 masters and an
    fp32 zero gradient of the partition coexist (buffers.zero12_init_states_grad_bytes). Parameter
    groups are flattened one by one; a later group's flatten meets the earlier groups' masters, which
    is not counted (Trainer's second group, biases and norms, is small)."""
    zero0 = ctx.is_deepspeed and ctx.zero_stage == 0 and ctx.training
    label = "after deepspeed.initialize" if ctx.is_deepspeed else "after model build"
    states_grad = buffers.zero12_init_states_grad_bytes(ctx)
    if states_grad:
        flatten = _moment("deepspeed.initialize: flatten", s.weights,
                          _transient(Component.RUNTIME, buffers.init_transient_bytes(ctx)))
        states = _moment("deepspeed.initialize: initialize_optimizer_states", s.weights, s.masters,
                         _transient(Component.RUNTIME, states_grad))
        return PhaseMemory(Phase.INIT, max((flatten, states), key=lambda m: m.total))
    moment = _moment(
        label,
        s.weights, _transient(Component.RUNTIME, buffers.init_transient_bytes(ctx)),
        _transient(Component.RUNTIME, fsdp.init_transient_bytes(ctx)) if ctx.is_fsdp else EMPTY,
        s.gradients if zero0 else s.persistent_gradients, s.optimizer if zero0 else s.masters, s.persistent_buckets,
    )
    return PhaseMemory(Phase.INIT, moment)


def forward_phase(ctx: Context, s: Shared) -> PhaseMemory:
    states = s.states()
    moments = []
    if Component.VISION in ctx.parts:
        moments.append(_moment("vision tower", *states, _transient(Component.VISION, act.vision_forward_transient(ctx))))
    if Component.LLM in ctx.parts:
        moments.append(_moment("LLM loss (logits)", *s.states(s.loss_gathered), s.activations[Component.LLM],
                               _transient(Component.LLM, act.llm_forward_transient(ctx))))
    if Component.SAM2_ENCODER in ctx.parts:
        moments.append(_moment("SAM2 image encoder", *states, s.activations[Component.SEG_HEAD],
                               _transient(Component.SAM2_ENCODER, act.sam2_encoder_transient(ctx))))
    moments.append(_moment("end of forward", *states, s.activations[Component.SAM2_DECODER]))
    return PhaseMemory(Phase.FORWARD, max(moments, key=lambda m: m.total))


def backward_phase(ctx: Context, s: Shared) -> PhaseMemory:
    """Start: every activation; the LLM loss backward: activations up to the LLM, the loss spike and
    the lm_head copy's gradient (made first, before any reduction); ZeRO-1/2's gradient bucket only
    when a trained output layer makes a gradient that early (buffers.output_grad_first); the LLM's
    layers backward: the recomputed layer and its gradients, the bucket allocated; end: all gradients.
    FSDP2: the start and the loss backward hold the unit the root prefetches, not the reduce-scatter,
    which is its own moment (memplan.estimate.fsdp)."""
    states = (*s.states(s.backward_held), s.buckets)
    start = (*s.states(s.backward_gathered), s.buckets)
    moments = [_moment("start of backward", *start, s.activations[Component.SAM2_DECODER])]
    if Component.LLM in ctx.parts and act.needs_graph(ctx, Component.LLM):
        head_grad = _group((Component.LLM, Category.GRADIENTS, buffers.lm_head_grad_bytes(ctx)))
        spike_states = start if buffers.output_grad_first(ctx) or ctx.is_fsdp else s.states(s.backward_held)
        moments.append(_moment("LLM loss backward", *spike_states, head_grad, s.activations[Component.LLM],
                               _transient(Component.LLM, act.llm_loss_backward_transient(ctx))))
        moments.append(_moment("LLM layers backward", *states, head_grad, s.layer_backward_activations,
                               _transient(Component.LLM, act.llm_layers_backward_transient(ctx))))
    if s.reduce_scatter.total:  # FSDP2: the largest unit's reduce-scatter, after its reshard
        moments.append(_moment("reduce-scatter", s.weights, s.optimizer, s.persistent_buckets, s.reduce_scatter,
                               s.gradients, s.reduce_scatter_activations))
    moments.append(_moment("end of backward", *states, s.gradients_after_backward(), s.activations[Component.PROJECTOR],
                           _transient(Component.RUNTIME, buffers.ddp_bucket_bytes(ctx))))
    return PhaseMemory(Phase.BACKWARD, max(moments, key=lambda m: m.total))


def optimizer_phase(ctx: Context, s: Shared) -> PhaseMemory:
    moment = _moment(
        "optimizer step", s.weights, s.optimizer, s.gradients, s.persistent_buckets, s.kept,
        _transient(Component.RUNTIME, buffers.step_transient_bytes(ctx) + buffers.ddp_bucket_bytes(ctx)),
    )
    return PhaseMemory(Phase.OPTIMIZER_STEP, moment)


def inference_forward(ctx: Context, s: Shared) -> PhaseMemory:
    states = (s.weights, s.gathered)
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
    shared = Shared(ctx)
    if not ctx.training:
        return [init_phase(ctx, shared), inference_forward(ctx, shared)]
    return [init_phase(ctx, shared), forward_phase(ctx, shared), backward_phase(ctx, shared),
            optimizer_phase(ctx, shared)]
