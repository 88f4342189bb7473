"""transformers' own model classes for the user-stack probes, built and adapted the way user scripts do.

Models (random weights, nothing downloaded), from the profile through the probe's config mapping
(memplan.integrations.huggingface.families: llm.to_config, internvit.to_config):
- a text-only profile (an LLM alone): Qwen2ForCausalLM / Qwen3ForCausalLM / LlamaForCausalLM;
- an InternVL profile (InternViT + projector + LLM, no SAM2): InternVLForConditionalGeneration
  (transformers/models/internvl/modeling_internvl.py), fed pixel_values for every tile and
  ``tiles * 256`` image tokens in input_ids, as InternVL's processor produces them.
Profiles with SAM2 or a seg head (Sa2VA) are refused: their wiring is memplan's own (stack sa2va).

Adaptation, in the order a user script runs it (``adapt``):
1. ``model.gradient_checkpointing_enable(use_reentrant=False)`` when the LLM checkpoints. In
   transformers 5 this calls ``enable_input_require_grads`` (modeling_utils.py,
   PreTrainedModel._activation_checkpointing_enable), which hooks the input embeddings of every
   PreTrainedModel inside the model: the vision tower's patch embeddings too.
2. peft ``get_peft_model(model, LoraConfig(target_modules=..., modules_to_save=...),
   autocast_adapter_dtype=...)``: targets are the LLM's linears (a regex over ``language_model`` in a
   VLM, so the vision tower's q/k/v stay frozen); with checkpointing on, peft calls
   ``enable_input_require_grads`` again (PeftModel._prepare_model_for_gradient_checkpointing).
   ``stack.adapter_dtype`` fp32 (default) is peft's ``autocast_adapter_dtype=True``: fp32 adapters on
   a bf16 model (peft/tuners/tuners_utils.py, BaseTuner._cast_adapter_dtype).
3. ``stack.embeddings_training``: ``copies`` puts embed_tokens/lm_head in ``modules_to_save``;
   ``in_place`` calls ``get_input_embeddings().requires_grad_(True)`` (and the output embeddings')
   on the base weights after get_peft_model. A trained projector is trained in place
   (``multi_modal_projector.requires_grad_(True)`` after get_peft_model), as memplan estimates it.
4. Full training: ``requires_grad_(True)`` on the trained parts.

5. ``stack.input_grad_hooks`` set explicitly (the memory-sink fix): ``llm`` removes every hook
   ``enable_input_require_grads`` registered and hooks the LLM's input embeddings only; ``none``
   removes them all (non-reentrant checkpointing needs no input that requires grad). Left unset,
   the hooks are whatever transformers and peft registered.

Weights dtype: fp32 when precision.compute is fp32 or precision.weights_fp32 (the model loaded as
float32, trained under autocast); the LLM (language model and head) alone in fp32 with
precision.llm_fp32_upcast; otherwise the compute dtype (bf16 weights).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memplan.estimate.stack import resolve
from memplan.integrations.huggingface.families import internvit
from memplan.integrations.huggingface.families import llm as llm_family
from memplan.probe.build import DTYPES, IGNORE_INDEX, attn_implementation
from memplan.probe.shapes import ProbeBuildError
from memplan.probe.stacks import check_stack_profile
from memplan.spec.loading import InputError
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Component

LLM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INTERNVL_IMAGE_TOKEN_ID = 151667  # InternVLConfig.image_token_id default (<IMG_CONTEXT> of InternVL2.5)
CHECKPOINT_KWARGS = {"use_reentrant": False}
# the hook functions of transformers' enable_input_require_grads and peft's fallback, and ours
REQUIRE_GRAD_HOOKS = ("make_inputs_require_grads", "make_inputs_require_grad", "_require_grad_hook")


@dataclass
class StackModel:
    """The model a user script trains, plus what the probe needs to feed and describe it."""

    model: nn.Module
    kind: str  # "causal_lm" or "internvl"
    profile: Profile
    plan: Plan
    weights_dtype: torch.dtype
    notes: list[str] = field(default_factory=list)


def weights_dtype(plan: Plan) -> torch.dtype:
    """The dtype the model is built in (see the module docstring)."""
    precision = plan.precision
    if precision.compute == "fp32" or precision.weights_fp32:
        return torch.float32
    return DTYPES[precision.compute]


def internvl_config(profile: Profile, plan: Plan, *, attn: str) -> Any:
    """InternVLConfig: InternViT from the vision spec, the LLM's text config, pixel shuffle 0.5."""
    from transformers import InternVLConfig

    text = llm_family.to_config(profile.llm, attn=attn, max_positions=plan.inputs.text_tokens)
    vision = internvit.to_config(profile.vision, attn=attn)
    ratio = 1 / int(round(profile.projector.merge_factor ** 0.5))
    image_token = INTERNVL_IMAGE_TOKEN_ID if INTERNVL_IMAGE_TOKEN_ID < profile.llm.vocab_size else profile.llm.vocab_size - 1
    patches = (profile.vision.image_size // profile.vision.patch_size) ** 2
    return InternVLConfig(vision_config=vision, text_config=text, image_token_id=image_token,
                          image_seq_length=int(patches * ratio * ratio), downsample_ratio=ratio,
                          tie_word_embeddings=profile.llm.tie_word_embeddings)


def build_hf_model(profile: Profile, plan: Plan) -> StackModel:
    """transformers' class for ``profile`` via ``from_config`` (random weights) in weights_dtype(plan)."""
    kind = check_stack_profile(profile, plan)
    try:
        attn = attn_implementation(plan)
    except ProbeBuildError as error:
        raise InputError(str(error)) from None
    dtype = weights_dtype(plan)
    if kind == "internvl":
        from transformers import InternVLForConditionalGeneration

        config = internvl_config(profile, plan, attn=attn)
        model = InternVLForConditionalGeneration._from_config(config, attn_implementation=attn, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM

        config = llm_family.to_config(profile.llm, attn=attn, max_positions=plan.inputs.text_tokens)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    model.config.use_cache = False
    if plan.precision.llm_fp32_upcast and dtype != torch.float32:
        _language_model(model).float()
        model.get_output_embeddings().float()
    notes = [f"stack {plan.stack.kind}: {type(model).__name__} ({attn} attention), weights {str(dtype).split('.')[-1]}"]
    return StackModel(model=model, kind=kind, profile=profile, plan=plan, weights_dtype=dtype, notes=notes)


def lora_targets(kind: str, names: tuple[str, ...]) -> str | list[str]:
    """peft target_modules: the names for a causal LM, a regex over the language model in a VLM."""
    if kind == "causal_lm":
        return list(names)
    return r".*language_model.*\.(" + "|".join(names) + r")$"


def _trained_extras(stack_model: StackModel) -> tuple[list[str], list[str]]:
    """(embedding modules to train, other modules to train: the projector) by their peft names."""
    plan = stack_model.plan
    embeddings = list(plan.components.llm.modules_to_save) if plan.trains(Component.LLM) else []
    # tied embed_tokens/lm_head: peft makes two copies (as Sa2VA's recipe gets); in place it is one tensor
    extras = ["multi_modal_projector"] if stack_model.kind == "internvl" and plan.trains(Component.PROJECTOR) else []
    return embeddings, extras


def _vision_checkpointing_off(model: nn.Module) -> None:
    """Turn checkpointing back off in the vision tower's layers, as a script that checkpoints only the
    language model has it (GradientCheckpointingLayer reads its own ``gradient_checkpointing`` flag)."""
    for module in _vision_tower(model).modules():
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = False


def adapt(stack_model: StackModel) -> nn.Module:
    """Checkpointing, peft, embeddings and full training as a user script does it; returns what trains."""
    from peft import LoraConfig, get_peft_model

    plan, model = stack_model.plan, stack_model.model
    llm = plan.components.llm
    model.requires_grad_(False)
    if llm.checkpointing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # 5.2x renames it activation_checkpointing_enable
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        if stack_model.kind == "internvl" and not resolve(plan).vision_checkpointing:
            _vision_checkpointing_off(model)  # stack.checkpoint_scope: components (the LLM's layers only)
    embeddings, extras = _trained_extras(stack_model)
    in_place = plan.stack.embeddings_training == "in_place"
    if plan.trains(Component.LLM) and llm.train == "lora":
        names = llm.lora.targets or LLM_LINEARS
        saved = None if in_place else embeddings or None
        config = LoraConfig(r=llm.lora.rank, lora_alpha=llm.lora.alpha, lora_dropout=llm.lora.dropout,
                            target_modules=lora_targets(stack_model.kind, tuple(names)), modules_to_save=saved,
                            bias="none", task_type="CAUSAL_LM")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
            model = get_peft_model(model, config, autocast_adapter_dtype=resolve(plan).adapters_fp32 is not False)
        _train_in_place(model, embeddings if in_place else [], extras)
        stack_model.notes.append(f"peft LoRA r={llm.lora.rank} on {', '.join(names)}; "
                                 f"{'in place' if in_place else 'modules_to_save'}: {embeddings or 'none'}; "
                                 f"trained in place: {extras or 'nothing else'}")
    else:
        if plan.trains(Component.LLM):
            _language_model(model).requires_grad_(True)
            model.get_output_embeddings().requires_grad_(True)
        _train_in_place(model, [], extras)
    if stack_model.kind == "internvl" and plan.trains(Component.VISION):
        _vision_tower(model).requires_grad_(True)
    if plan.stack.input_grad_hooks is not None:
        set_input_grad_hooks(model, plan.stack.input_grad_hooks)
        stack_model.notes.append(f"input-grad hooks set to {plan.stack.input_grad_hooks} (stack.input_grad_hooks)")
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError(f"stack.kind={plan.stack.kind}: the plan trains nothing of {stack_model.profile.name}")
    model.train()
    stack_model.model = model
    return model


def _train_in_place(model: nn.Module, embeddings: list[str], extras: list[str]) -> None:
    """requires_grad_(True) on the base weights: embed_tokens via get_input_embeddings(), lm_head via
    get_output_embeddings() (one tensor when tied), the projector by name."""
    if "embed_tokens" in embeddings:
        model.get_input_embeddings().requires_grad_(True)
    if "lm_head" in embeddings:
        model.get_output_embeddings().requires_grad_(True)
    for name, module in model.named_modules():
        if extras and name.rsplit(".", 1)[-1] in extras:
            module.requires_grad_(True)


def _language_model(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", model)
    return getattr(inner, "language_model", inner)


def _vision_tower(model: nn.Module) -> nn.Module:
    for name, module in model.named_modules():
        if name.endswith("vision_tower"):
            return module
    raise ProbeBuildError("no vision_tower in the InternVL model")


def component_of(name: str) -> Component:
    """The memplan Component of a parameter of these models (peft prefixes and copies included)."""
    if "vision_tower" in name:
        return Component.VISION
    if "multi_modal_projector" in name:
        return Component.PROJECTOR
    return Component.LLM


def parameter_counts(model: nn.Module, *, trainable: bool) -> dict[str, int]:
    """Parameters per Component value, trainable or frozen (shared tensors counted once)."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad == trainable:
            key = component_of(name).value
            counts[key] = counts.get(key, 0) + int(getattr(param, "ds_numel", param.numel()))
    return counts


def input_grad_hooks(model: nn.Module) -> list[str]:
    """Names of the modules carrying a forward hook registered by enable_input_require_grads."""
    found = []
    for name, module in model.named_modules():
        hooks = getattr(module, "_forward_hooks", {})
        if any(getattr(hook, "__name__", "") in REQUIRE_GRAD_HOOKS for hook in hooks.values()):
            found.append(name)
    return found


def _require_grad_hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
    output.requires_grad_(True)


def set_input_grad_hooks(model: nn.Module, which: str) -> None:
    """Remove the hooks enable_input_require_grads left; for ``llm`` hook the LLM's embeddings only."""
    for module in model.modules():
        hooks = getattr(module, "_forward_hooks", {})
        for key in [k for k, hook in hooks.items() if getattr(hook, "__name__", "") in REQUIRE_GRAD_HOOKS]:
            del hooks[key]
    if which == "llm":
        model.get_input_embeddings().register_forward_hook(_require_grad_hook)


def make_sample(stack_model: StackModel, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """One sample as a tokenizer/processor gives it: input_ids, attention_mask, labels (image positions
    -100) and, for InternVL, fp32 pixel_values (tiles, 3, 448, 448) with tiles * 256 image tokens."""
    profile, plan = stack_model.profile, stack_model.plan
    generator = torch.Generator().manual_seed(seed)
    tokens = plan.inputs.text_tokens
    vocab = profile.llm.vocab_size
    sample: dict[str, torch.Tensor] = {}
    image_tokens = 0
    if stack_model.kind == "internvl":
        config = stack_model.model.config
        tiles = plan.inputs.tiles
        image_tokens = tiles * config.image_seq_length
        if image_tokens + 1 > tokens:
            raise InputError(f"inputs: tiles({tiles}) * {config.image_seq_length} image tokens + 1 > "
                             f"text_tokens({tokens})")
        side = profile.vision.image_size
        if tiles:
            sample["pixel_values"] = torch.randn(tiles, 3, side, side, generator=generator)
    ids = torch.randint(0, vocab, (tokens,), generator=generator)
    if stack_model.kind == "internvl":
        image_token = stack_model.model.config.image_token_id
        ids[ids == image_token] = (image_token + 1) % vocab
        ids[:image_tokens] = image_token
    labels = ids.clone()
    labels[:image_tokens] = IGNORE_INDEX
    sample.update(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    return sample


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack token tensors; concatenate pixel_values over samples (InternVL takes (sum of tiles, 3, H, W))."""
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0] if key != "pixel_values"}
    if "pixel_values" in samples[0]:
        batch["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])
    return batch
