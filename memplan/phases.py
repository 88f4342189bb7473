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

from memplan.estimators import activations as act
from memplan.estimators import buffers, gradients, optimizer, weights
from memplan.estimators.context import Context
from memplan.vocabulary import Category, Component, Phase


@dataclass(frozen=True)
class Term:
    component: Component
    category: Category
    bytes: int


@dataclass(frozen=True)
class Moment:
    label: str
    terms: tuple[Term, ...]

    @property
    def total(self) -> int:
        return sum(t.bytes for t in self.terms)


@dataclass(frozen=True)
class PhaseMemory:
    phase: Phase
    moment: Moment  # the largest moment of the phase

    @property
    def total(self) -> int:
        return self.moment.total


def _terms(*items: tuple[Component, Category, int]) -> list[Term]:
    return [Term(c, k, b) for c, k, b in items if b]


def _model_states(ctx: Context, *, with_optimizer: bool) -> list[Term]:
    out: list[Term] = []
    for c in ctx.parts:
        out += _terms(
            (c, Category.WEIGHTS, weights.frozen_weight_bytes(ctx, c)),
            (c, Category.TRAINABLE_WEIGHTS, weights.trainable_weight_bytes(ctx, c)),
        )
        if with_optimizer:
            out += _terms(
                (c, Category.MASTER_WEIGHTS, optimizer.master_weight_bytes(ctx, c)),
                (c, Category.OPTIMIZER_STATE, optimizer.optimizer_state_bytes(ctx, c)),
            )
    return out


def _persistent_gradients(ctx: Context) -> list[Term]:
    """Gradient storage that outlives zero_grad: DeepSpeed's partition buffers (stage 2/3) and
    BF16_Optimizer's fp32 accumulators (stage 0). Plain PyTorch frees grads (set_to_none)."""
    if not ctx.is_deepspeed or ctx.zero_stage == 1:
        return []
    return [t for c in ctx.parts for t in _terms((c, Category.GRADIENTS, gradients.gradient_bytes(ctx, c)))]


def _all_gradients(ctx: Context) -> list[Term]:
    return [t for c in ctx.parts for t in _terms((c, Category.GRADIENTS, gradients.gradient_bytes(ctx, c)))]


def _engine_buffers(ctx: Context) -> list[Term]:
    return _terms(
        (Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.ipg_bucket_bytes(ctx)),
        (Component.RUNTIME, Category.DEEPSPEED_BUFFERS, buffers.zero3_gathered_bytes(ctx)),
    )


def _activations(ctx: Context, upto: Component | None = None) -> list[Term]:
    order = [
        (Component.VISION, act.vision_activation_bytes),
        (Component.PROJECTOR, act.projector_activation_bytes),
        (Component.LLM, lambda c: act.llm_activation_bytes(c) + act.logits_saved_bytes(c)),
        (Component.SEG_HEAD, act.seg_head_activation_bytes),
        (Component.SAM2_ENCODER, lambda c: act.sam2_feature_bytes(c) if act.needs_graph(c, Component.SAM2_DECODER) else 0),
        (Component.SAM2_DECODER, act.sam2_decoder_activation_bytes),
    ]
    out: list[Term] = []
    for component, fn in order:
        if component in ctx.parts:
            out += _terms((component, Category.ACTIVATIONS, fn(ctx)))
        if component is upto:
            break
    return out


def _transient(component: Component, num_bytes: int) -> list[Term]:
    return _terms((component, Category.TRANSIENT, num_bytes))


def init_phase(ctx: Context) -> PhaseMemory:
    base = _model_states(ctx, with_optimizer=False)
    moment = Moment("after deepspeed.initialize" if ctx.is_deepspeed else "after model build", tuple(
        base
        + _transient(Component.RUNTIME, buffers.init_transient_bytes(ctx))
        + (_persistent_gradients(ctx) if ctx.zero_stage == 0 else [])
        + [t for c in ctx.parts for t in _terms((c, Category.MASTER_WEIGHTS, optimizer.master_weight_bytes(ctx, c)))]
    ))
    return PhaseMemory(Phase.INIT, moment)


def forward_phase(ctx: Context) -> PhaseMemory:
    states = _model_states(ctx, with_optimizer=True) + _persistent_gradients(ctx) + _engine_buffers(ctx)
    moments = []
    if Component.VISION in ctx.parts:
        moments.append(Moment("vision tower", tuple(states + _transient(Component.VISION, act.vision_forward_transient(ctx)))))
    if Component.LLM in ctx.parts:
        saved = _activations(ctx, upto=Component.PROJECTOR) + _terms(
            (Component.LLM, Category.ACTIVATIONS, act.llm_activation_bytes(ctx) + act.logits_saved_bytes(ctx)))
        moments.append(Moment("LLM loss (logits)", tuple(states + saved + _transient(Component.LLM, act.llm_forward_transient(ctx)))))
    if Component.SAM2_ENCODER in ctx.parts:
        saved = _activations(ctx, upto=Component.SEG_HEAD)
        moments.append(Moment("SAM2 image encoder", tuple(states + saved + _transient(Component.SAM2_ENCODER, act.sam2_encoder_transient(ctx)))))
    moments.append(Moment("end of forward", tuple(states + _activations(ctx))))
    return PhaseMemory(Phase.FORWARD, max(moments, key=lambda m: m.total))


def backward_phase(ctx: Context) -> PhaseMemory:
    states = _model_states(ctx, with_optimizer=True) + _engine_buffers(ctx)
    persistent = _persistent_gradients(ctx)
    moments = [Moment("start of backward", tuple(states + persistent + _activations(ctx)))]
    if Component.LLM in ctx.parts and act.needs_graph(ctx, Component.LLM):
        early = _activations(ctx, upto=Component.LLM) + _transient(Component.LLM, act.llm_backward_transient(ctx))
        head_grad = _terms((Component.LLM, Category.GRADIENTS, buffers.lm_head_grad_bytes(ctx)))
        moments.append(Moment("LLM loss backward", tuple(states + (persistent or head_grad) + early)))
    grads = _all_gradients(ctx) if not ctx.is_deepspeed or ctx.zero_stage == 1 else persistent
    late = _activations(ctx, upto=Component.PROJECTOR) + _terms(
        (Component.RUNTIME, Category.TRANSIENT, buffers.ddp_bucket_bytes(ctx)))
    moments.append(Moment("end of backward", tuple(states + grads + late)))
    return PhaseMemory(Phase.BACKWARD, max(moments, key=lambda m: m.total))


def optimizer_phase(ctx: Context) -> PhaseMemory:
    states = _model_states(ctx, with_optimizer=True) + _engine_buffers(ctx)
    grads = _all_gradients(ctx) if not ctx.is_deepspeed or ctx.zero_stage == 1 else _persistent_gradients(ctx)
    moment = Moment("optimizer step", tuple(
        states + grads + _transient(Component.RUNTIME, buffers.step_transient_bytes(ctx))
        + _terms((Component.RUNTIME, Category.TRANSIENT, buffers.ddp_bucket_bytes(ctx)))))
    return PhaseMemory(Phase.OPTIMIZER_STEP, moment)


def inference_forward(ctx: Context) -> PhaseMemory:
    states = _model_states(ctx, with_optimizer=False) + _engine_buffers(ctx)
    moments = [Moment("weights", tuple(states))]
    if Component.VISION in ctx.parts:
        moments.append(Moment("vision tower", tuple(states + _transient(Component.VISION, act.vision_forward_transient(ctx)))))
    if Component.LLM in ctx.parts:
        moments.append(Moment("LLM logits", tuple(states + _transient(Component.LLM, act.llm_forward_transient(ctx)))))
    if Component.SAM2_ENCODER in ctx.parts:
        moments.append(Moment("SAM2 image encoder", tuple(states + _transient(Component.SAM2_ENCODER, act.sam2_encoder_transient(ctx)))))
    return PhaseMemory(Phase.FORWARD, max(moments, key=lambda m: m.total))


def all_phases(ctx: Context) -> list[PhaseMemory]:
    if not ctx.training:
        return [init_phase(ctx), inference_forward(ctx)]
    return [init_phase(ctx), forward_phase(ctx), backward_phase(ctx), optimizer_phase(ctx)]
