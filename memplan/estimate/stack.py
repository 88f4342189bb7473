"""What the training stack does to memory: the plan's ``stack`` section resolved into behaviours.

Each stack (memplan.spec.plan.Stack) gives defaults; every knob the plan sets wins over them. A
behaviour that depends on a library version is resolved from the installed version through
importlib.metadata (no torch import), or from ``stack.transformers_version``, and the resolution
says what it assumed.

Sources, by behaviour:
- adapters in fp32: peft ``get_peft_model(..., autocast_adapter_dtype=True)`` (the default) casts LoRA
  weights to fp32 on a bf16 base (peft/tuners/tuners_utils.py, ``_cast_adapter_dtype``); DeepSpeed's
  bf16 engine then casts the whole module back to bf16 (deepspeed/runtime/engine.py,
  ``_configure_distributed_model``).
- copies in the base dtype: peft ``ModulesToSaveWrapper`` deep-copies the module as it is
  (peft/utils/other.py); Trainer and accelerate keep no fp32 master copy.
- input-gradient hooks: transformers 5 ``PreTrainedModel.enable_input_require_grads`` hooks the input
  embeddings of every PreTrainedModel among ``self.modules()`` (modeling_utils.py); it is called by
  ``activation_checkpointing_enable`` when ``main_input_name == "input_ids"`` and by peft's
  ``PeftModel._prepare_model_for_gradient_checkpointing`` when the model already checkpoints
  (peft_model.py). transformers 4.x hooked only the top model's embeddings.
- autocast: ``TrainingArguments(bf16=True)`` and accelerate's ``mixed_precision="bf16"`` run the forward
  under torch.autocast; a plain loop over a bf16 model usually does not.
- fused optimizer: ``TrainingArguments.optim`` defaults to ``adamw_torch_fused`` (no foreach temporaries).
- checkpoint scope: ``gradient_checkpointing_enable`` / ``activation_checkpointing_enable`` on the top
  model sets checkpointing on every GradientCheckpointingLayer among ``self.modules()``
  (transformers/modeling_utils.py, ``_set_gradient_checkpointing``), InternVL's vision layers
  included (models/internvl/modeling_internvl.py, ``InternVLVisionLayer``): the default of the
  transformers stacks; the sa2va harness checkpoints per component.
- kept outputs: Trainer's ``compute_loss`` returns the loss only, so the outputs are freed before
  backward (trainer.py); a loop that writes ``out = model(...); out.loss.backward()`` keeps the logits.
- fp32 outputs: accelerate's ``prepare`` with ``mixed_precision`` bf16/fp16 wraps ``model.forward`` in
  ``convert_outputs_to_fp32(autocast(forward))`` (accelerate/accelerator.py, ``prepare_model``), so
  the outputs an accelerate loop keeps hold fp32 logits (accelerate/utils/operations.py,
  ``convert_to_fp32``); ``prepare`` casts no weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from memplan.spec.plan import Plan

PEFT_STACKS = ("hf-trainer", "accelerate", "custom-loop")
ASSUMED_TRANSFORMERS = "5"  # the major version assumed when transformers is not installed


@dataclass(frozen=True, slots=True)
class Behaviour:
    """The memory behaviours of a plan's training stack, resolved."""

    kind: str
    adapters_fp32: bool | None  # None: the harness's own rule (memplan.estimate.context._dtype_bytes)
    copies_in_base_dtype: bool  # modules_to_save copies and fully trained parts keep the weights' dtype
    embeddings_in_place: bool
    input_grad_hooks: str  # llm | all_towers | none
    keeps_outputs: bool
    chunked_loss: bool
    autocast: bool | None  # None: the harness's own rule (autocast only with the fp32 upcast)
    fused_optimizer: bool
    eager_attention: bool
    vision_checkpointing: bool  # the vision tower's layers run under checkpointing
    outputs_fp32: bool = False  # the kept outputs are fp32 copies (accelerate's convert_outputs_to_fp32)
    assumptions: tuple[str, ...] = ()

    @property
    def hooks_vision(self) -> bool:
        return self.input_grad_hooks == "all_towers"


@lru_cache(maxsize=8)
def installed_version(package: str) -> str | None:
    """The installed version of a package, read from its metadata (nothing imported)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else int(ASSUMED_TRANSFORMERS)


def transformers_major(plan: Plan) -> tuple[int, str | None]:
    """(major version, assumption or None): the plan's stack.transformers_version, else the
    installed transformers, else 5 (said so)."""
    if plan.stack.transformers_version:
        return _major(plan.stack.transformers_version), None
    version = installed_version("transformers")
    if version is None:
        return int(ASSUMED_TRANSFORMERS), f"transformers not installed: assumed {ASSUMED_TRANSFORMERS}.x behaviour"
    return _major(version), f"transformers {version} (installed)"


def _hooks(plan: Plan, notes: list[str]) -> str:
    """Which input embeddings get a require-grad hook: the plan's knob, else derived.

    sa2va (the official recipe's wiring): the LLM's. Other stacks: none without checkpointing; with
    checkpointing, every tower from transformers 5 on, the LLM's before."""
    if plan.stack.input_grad_hooks is not None:
        return plan.stack.input_grad_hooks
    if plan.stack.kind == "sa2va":
        return "llm"
    if not plan.components.llm.checkpointing or plan.mode != "train":
        return "none"
    major, note = transformers_major(plan)
    if note:
        notes.append(note)
    return "all_towers" if major >= 5 else "llm"


def resolve(plan: Plan) -> Behaviour:
    """The plan's stack as behaviours, knobs first, then the stack's defaults."""
    stack = plan.stack
    peft_stack = stack.kind in PEFT_STACKS
    notes: list[str] = []
    adapters_fp32 = None
    if stack.adapter_dtype is not None:
        adapters_fp32 = stack.adapter_dtype == "fp32"
    elif peft_stack:
        adapters_fp32 = True  # peft's autocast_adapter_dtype=True
    autocast = {"hf-trainer": True, "accelerate": True, "custom-loop": False}.get(stack.kind)
    if stack.autocast is not None:
        autocast = stack.autocast
    keeps = stack.keeps_outputs if stack.keeps_outputs is not None else stack.kind in ("accelerate", "custom-loop")
    fused = stack.fused_optimizer if stack.fused_optimizer is not None else stack.kind == "hf-trainer"
    scope = stack.checkpoint_scope or ("model" if peft_stack else "components")
    vision_ckpt = plan.components.vision.checkpointing or (scope == "model" and plan.components.llm.checkpointing)
    # accelerate converts a mixed-precision forward's outputs to fp32 (mixed_precision follows autocast)
    outputs_fp32 = stack.kind == "accelerate" and bool(autocast) and plan.precision.compute != "fp32"
    return Behaviour(
        kind=stack.kind, adapters_fp32=adapters_fp32, copies_in_base_dtype=peft_stack,
        embeddings_in_place=stack.embeddings_training == "in_place", input_grad_hooks=_hooks(plan, notes),
        keeps_outputs=keeps, chunked_loss=stack.loss == "chunked", autocast=autocast, fused_optimizer=fused,
        eager_attention=plan.attention == "eager", vision_checkpointing=vision_ckpt, outputs_fp32=outputs_fp32,
        assumptions=tuple(notes),
    )
