"""Memory sinks: memory a plan's training stack spends that the user can get back with one code change.

Each sink is found by estimating the plan again with one behaviour of its stack changed
(memplan.estimate.stack) and taking the difference of the peak allocated bytes; a sink is named only
when that saves at least MIN_SAVING_SHARE of the peak. The tool then says what the user's code does
to memory, the GiB it costs, and the line that changes it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from memplan.estimate import Estimate, estimate
from memplan.estimate.context import Context, build_context
from memplan.planning.advice import apply
from memplan.spec.calibration import Calibration
from memplan.spec.flags import set_dotted
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Component

MIN_SAVING_SHARE = 0.01  # a sink under 1% of the peak is not worth a code change


class Sink(NamedTuple):
    """One removable memory cost of the stack: what it is, what it saves, the change that removes it."""

    name: str
    what: str  # what the user's code does
    saved_bytes: int  # bytes saved per GPU by the change: of the peak allocated (of needed for the allocator)
    change: str  # the one-line code change
    knob: str  # the plan setting that models the change
    measured: bool  # whether the mechanism was measured on a GPU (else modelled from library code)


def _with(plan: Plan, update: dict[str, Any]) -> Plan:
    """The plan with dotted settings changed (advice.apply on the nested update)."""
    nested: dict[str, Any] = {}
    for dotted, value in update.items():
        set_dotted(nested, dotted, value)
    return apply(plan, nested)


class _Candidate(NamedTuple):
    name: str
    applies: Callable[[Context], bool]  # on the plan's resolved context
    update: dict[str, Any]
    what: str
    change: str | Callable[[Context], str]  # the code change, or one per stack
    measured: bool


def _hooks_change(ctx: Context) -> str:
    """Hook the LLM's embeddings only; under Trainer in a callback, since Trainer.train re-hooks every tower
    when it turns checkpointing on (activation_checkpointing_enable -> enable_input_require_grads), after
    any change made to the model before it."""
    fix = ("model.disable_input_require_grads(); model.get_input_embeddings().register_forward_hook("
           "lambda m, i, o: o.requires_grad_(True))")
    if ctx.stack.kind == "hf-trainer":
        return (f"in a TrainerCallback's on_train_begin(self, args, state, control, model=None, **kw): {fix}  "
                "# Trainer re-hooks every tower when it enables checkpointing, after changes made before it")
    return f"{fix}  # after get_peft_model: hook the LLM's embeddings only"


def _hooks_vision(ctx: Context) -> bool:
    vision = ctx.parts.get(Component.VISION)
    return bool(ctx.stack.hooks_vision and vision is not None and vision.trainable == 0 and ctx.training)


def _fp32_adapters(ctx: Context) -> bool:
    llm = ctx.parts.get(Component.LLM)
    return bool(ctx.stack.adapters_fp32 and not ctx.is_deepspeed and llm is not None
                and ctx.plan.components.llm.train == "lora" and llm.trainable_bytes == 4 and ctx.compute_bytes < 4
                and llm.weight_bytes < 4)


CANDIDATES = (
    _Candidate(
        "input-grad hooks on the vision tower", _hooks_vision, {"stack.input_grad_hooks": "llm"},
        "enable_input_require_grads (transformers 5, called with checkpointing) hooks the frozen vision tower's "
        "embeddings, so the tower keeps an autograd graph (all of it, or each layer's input when checkpointed)",
        _hooks_change, True),
    _Candidate(
        "eager attention", lambda ctx: ctx.plan.attention == "eager", {"attention": "sdpa"},
        "attn_implementation='eager' keeps every layer's s x s attention probabilities (fp32 and bf16)",
        "from_pretrained(..., attn_implementation='sdpa')  # or 'flash_attention_2'", True),
    _Candidate(
        "outputs kept through backward", lambda ctx: ctx.stack.keeps_outputs
        and ctx.training and ctx.profile.llm is not None,
        {"stack.keeps_outputs": False},
        "the loop keeps the model output (its logits, and hidden states when asked) alive through backward",
        "loss = model(**batch).loss; loss.backward()  # instead of out = model(...); out.loss.backward()", True),
    _Candidate(
        "fp32 LoRA adapters", _fp32_adapters, {"stack.adapter_dtype": "compute"},
        "peft's autocast_adapter_dtype=True keeps the adapters, their gradients and Adam moments in fp32 and "
        "copies every adapter input to fp32",
        "get_peft_model(model, config, autocast_adapter_dtype=False)", True),
    _Candidate(
        "full-vocabulary loss", lambda ctx: ctx.training and ctx.profile.llm is not None
        and ctx.plan.stack.loss == "full_vocab",
        {"stack.loss": "chunked"},
        "the cross-entropy materialises the logits over the whole vocabulary in bf16 and fp32, and their gradient",
        "liger_kernel.transformers.apply_liger_kernel_to_<family>(fused_linear_cross_entropy=True) before building "
        "the model (a fused linear cross-entropy)", False),
)


def allocator_sink(profile: Profile, plan: Plan, *, calibration: Calibration | None, result: Estimate) -> Sink | None:
    """The default allocator's fragmentation margin, named where it matters: the plan does not fit clear
    of the tight band. Its saving is of what the card must hold (needed_bytes), not of the allocated
    peak: expandable segments allocate the same tensors (memplan.estimate.overhead.needed_bytes;
    measured: h200-batch8 and -9, docs/accuracy.md)."""
    if plan.stack.allocator != "default" or result.clear_fit:
        return None
    changed = estimate(profile, _with(plan, {"stack.allocator": "expandable_segments"}), calibration).needed_bytes
    saved = result.needed_bytes - changed
    if saved <= 0 or saved < MIN_SAVING_SHARE * result.needed_bytes:
        return None
    return Sink("default allocator's fragmentation",
                "PyTorch's default caching allocator strands freed blocks inside their cudaMalloc segments; near the "
                "card that margin, not the tensors, decides whether the step runs out",
                saved, "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # before the launch; torchrun and "
                "deepspeed ranks inherit it", "stack.allocator=expandable_segments", True)


def find_sinks(profile: Profile, plan: Plan, *, calibration: Calibration | None = None,
               result: Estimate | None = None) -> list[Sink]:
    """The removable costs of the plan's stack, largest saving first (``result``: the plan's own
    estimate, when the caller has it)."""
    result = result or estimate(profile, plan, calibration)
    base = result.peak_allocated_bytes
    ctx = build_context(profile, plan)
    sinks = []
    for candidate in CANDIDATES:
        if not candidate.applies(ctx):
            continue
        changed = estimate(profile, _with(plan, candidate.update), calibration).peak_allocated_bytes
        saved = base - changed
        if saved >= MIN_SAVING_SHARE * base and saved > 0:
            knob = ", ".join(f"{k}={v}" for k, v in candidate.update.items())
            change = candidate.change(ctx) if callable(candidate.change) else candidate.change
            sinks.append(Sink(candidate.name, candidate.what, saved, change, knob, candidate.measured))
    allocator = allocator_sink(profile, plan, calibration=calibration, result=result)
    return sorted(sinks + ([allocator] if allocator else []), key=lambda s: -s.saved_bytes)


def stack_summary(profile: Profile, plan: Plan) -> dict[str, Any]:
    """The stack's behaviours as resolved for this plan, and what was assumed (for the output)."""
    behaviour = build_context(profile, plan).stack
    adapters = "fp32" if behaviour.adapters_fp32 else ("compute" if behaviour.adapters_fp32 is False else "harness")
    if plan.engine.kind == "deepspeed" and behaviour.adapters_fp32 is not None:
        adapters = "compute (DeepSpeed's bf16/fp16 engine casts the module)"  # memplan.estimate.context._dtype_bytes
    return {
        "kind": behaviour.kind,
        "adapters": adapters,
        "embeddings_training": "in_place" if behaviour.embeddings_in_place else "copies",
        "input_grad_hooks": behaviour.input_grad_hooks,
        "keeps_outputs": behaviour.keeps_outputs,
        "outputs_fp32": behaviour.outputs_fp32,
        "autocast": behaviour.autocast,
        "fused_optimizer": behaviour.fused_optimizer,
        "attention": plan.attention,
        "loss": "chunked" if behaviour.chunked_loss else "full_vocab",
        "assumptions": list(behaviour.assumptions),
    }
