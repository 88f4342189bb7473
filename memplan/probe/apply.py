"""Apply a plan to a built ``Sa2VAProbeModel``: freezing, LoRA, modules_to_save, checkpointing, dtypes.

Order, as Sa2VA's training code does it: everything frozen; ``precision.llm_fp32_upcast`` runs
peft.prepare_model_for_kbit_training on the (unquantized) LLM, which freezes it and casts its 16-bit
parameters to fp32; LoRA through peft (targets None = every nn.Linear of the decoder layers;
modules_to_save = peft's trainable copy beside the frozen original); full training per component;
gradient checkpointing (non-reentrant) per component; finally trainable parameters get the master
dtype of the engine (see ``cast_trainable``).
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter

import torch
from torch import nn

from memplan.spec.plan import ComponentPlan, LoRA, Plan
from memplan.probe.build import DTYPES, ProbeBuildError, Sa2VAProbeModel
from memplan.spec.vocabulary import Component

LLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINT_KWARGS = {"use_reentrant": False}


def checkpoint_function():
    """torch.utils.checkpoint.checkpoint, non-reentrant (transformers' default since 4.35)."""
    from torch.utils.checkpoint import checkpoint

    return functools.partial(checkpoint, **CHECKPOINT_KWARGS)


def enable_checkpointing(module: nn.Module) -> int:
    """Turn on checkpointing in every transformers GradientCheckpointingLayer below ``module``; returns how many."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    count = 0
    for layer in module.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = checkpoint_function()
            count += 1
    return count


def lora_config(lora: LoRA, targets: list[str] | tuple[str, ...], modules_to_save: tuple[str, ...] = ()):
    """peft LoraConfig from the plan's LoRA section."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(targets),
        modules_to_save=list(modules_to_save) or None,
        bias="none",
    )


def vision_lora_targets(vision: nn.Module, targets: tuple[str, ...] | None) -> list[str]:
    """Full names of the nn.Linear modules inside the vision tower's layers (not its merger)."""
    names = []
    for name, module in vision.named_modules():
        in_layers = name.startswith(("encoder.layer.", "blocks."))
        if isinstance(module, nn.Linear) and in_layers and (targets is None or name.rsplit(".", 1)[-1] in targets):
            names.append(name)
    if not names:
        raise ProbeBuildError(f"components.vision.lora.targets={targets}: matches no nn.Linear of the vision layers")
    return names


def apply_llm(model: Sa2VAProbeModel, plan: Plan, part: ComponentPlan) -> None:
    """Upcast, checkpointing, LoRA/modules_to_save or full training of the LLM."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    llm = model.llm
    if plan.precision.llm_fp32_upcast:
        prepare_model_for_kbit_training(llm, use_gradient_checkpointing=part.checkpointing,
                                        gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    # peft 0.21's prepare_model_for_kbit_training enables checkpointing only on quantized models; Sa2VA
    # turns it on itself (use_activation_checkpointing), so do it explicitly in every case.
    if part.checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    if not plan.trains(Component.LLM):
        return
    if part.train == "full":
        llm.requires_grad_(True)
        return
    targets = part.lora.targets or LLM_LORA_TARGETS
    with warnings.catch_warnings():  # tied embed_tokens/lm_head get two trainable copies, as in Sa2VA
        warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
        model.llm = get_peft_model(llm, lora_config(part.lora, targets, part.modules_to_save))


def apply_vision(model: Sa2VAProbeModel, plan: Plan, part: ComponentPlan) -> None:
    """Checkpointing and LoRA of the vision tower (full training is handled per component)."""
    from peft import get_peft_model

    if part.checkpointing:
        enable_checkpointing(model.vision)
    if plan.trains(Component.VISION) and part.train == "lora":
        targets = vision_lora_targets(model.vision, part.lora.targets)
        model.vision = get_peft_model(model.vision, lora_config(part.lora, targets))


def unfreeze_full(model: Sa2VAProbeModel, plan: Plan) -> None:
    """requires_grad for every parameter of the components the plan trains in full."""
    full = {c for c in Component if c is not Component.RUNTIME and plan.trains(c)
            and plan.components.get(c).train == "full"}
    for name, param in model.named_parameters():
        if model.component_of(name) in full:
            param.requires_grad_(True)


def cast_trainable(model: Sa2VAProbeModel, plan: Plan) -> None:
    """Trainable parameters' dtype: fp32 master copies for plain PyTorch mixed precision, else compute.

    Under DeepSpeed the trainable parameters (peft makes its adapters fp32) are cast to the compute
    dtype: the bf16/fp16 engine keeps the fp32 masters inside its optimizer, casts the module itself
    at stages 0-2, and ZeRO-3 requires one dtype across a parameter group's partitions.
    """
    compute = DTYPES[plan.precision.compute]
    if plan.engine.kind == "deepspeed":
        target = compute
    else:
        target = torch.float32 if plan.precision.master_weights else compute
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)


def apply_plan(model: Sa2VAProbeModel, plan: Plan) -> Sa2VAProbeModel:
    """Freeze, adapt, checkpoint and cast ``model`` per ``plan``; returns it (LoRA wraps submodules)."""
    model.requires_grad_(False)
    if model.llm is not None:
        apply_llm(model, plan, plan.components.llm)
    if model.vision is not None:
        apply_vision(model, plan, plan.components.vision)
    if model.sam2 is not None:
        if plan.components.sam2_decoder.checkpointing:
            enable_checkpointing(model.sam2.mask_decoder)
        if plan.components.sam2_encoder.checkpointing:
            enable_checkpointing(model.sam2.vision_encoder)
    unfreeze_full(model, plan)
    cast_trainable(model, plan)
    if plan.mode == "train" and not any(p.requires_grad for p in model.parameters()):
        raise ProbeBuildError("plan trains nothing: every component of the profile is frozen")
    model.train(plan.mode == "train")
    return model


def parameter_counts(model: nn.Module, *, trainable: bool) -> dict[str, int]:
    """Parameters per Component value, trainable or frozen (shared tensors counted once)."""
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():
        if param.requires_grad == trainable:
            counts[model.component_of(name).value] += _numel(param)
    return dict(counts)


def _numel(param: torch.Tensor) -> int:
    """Element count; DeepSpeed ZeRO-3 keeps the full count in ``ds_numel``."""
    return int(getattr(param, "ds_numel", param.numel()))
