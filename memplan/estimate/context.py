"""Derived quantities every estimator needs, computed once per (profile, plan).

Nothing here allocates memory or imports torch: it turns the plan's choices into parameter counts
per component (frozen, trainable), dtype widths and the ZeRO sharding divisors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from memplan.estimate.stack import Behaviour, resolve
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.units import DTYPE_BYTES
from memplan.spec.vocabulary import Component


class PartCounts(NamedTuple):
    """Parameter counts of one component under a plan."""

    total: int  # parameters of the architecture
    frozen: int  # parameters that stay frozen (the base of a LoRA component included)
    trainable: int  # parameters the optimizer updates (LoRA adapters, modules_to_save copies)
    weight_bytes: int  # bytes per frozen parameter on the device
    trainable_bytes: int  # bytes per trainable parameter as the model holds it (LoRA adapters)
    copies: int = 0  # of the trainable: those held in copies_bytes (peft copies, fully trained weights)
    copies_bytes: int = 0

    @property
    def trainable_held_bytes(self) -> int:
        """Bytes of the trainable parameters as the model holds them: adapters at trainable_bytes,
        copies (modules_to_save, in-place embeddings, fully trained weights) at copies_bytes."""
        return (self.trainable - self.copies) * self.trainable_bytes + self.copies * self.copies_bytes


@dataclass(frozen=True, slots=True)
class Context:
    """Plan facts every estimator reads, resolved once (estimates run thousands of times a second
    inside `memplan search`)."""

    profile: Profile
    plan: Plan
    parts: dict[Component, PartCounts] = field(default_factory=dict)
    num_gpus: int = 1
    zero_stage: int = 0  # 0 for plain PyTorch
    is_deepspeed: bool = False
    is_fsdp: bool = False  # engine.kind == fsdp2 (memplan.estimate.fsdp)
    training: bool = True
    compute_bytes: int = 2
    total_trainable: int = 0
    graph: dict[Component, bool] = field(default_factory=dict)  # keeps activations for backward
    stack: Behaviour | None = None  # the training stack's memory behaviours (memplan.estimate.stack)

    def shard(self, num_bytes: int, *, at_stage: int) -> int:
        """ZeRO partitioning (Rajbhandari et al. 2019, arXiv 1910.02054): a state partitioned from
        stage ``at_stage`` on is held 1/N per GPU (ceil), else whole on every GPU."""
        if self.is_deepspeed and self.zero_stage >= at_stage and self.num_gpus > 1:
            return -(-num_bytes // self.num_gpus)
        return num_bytes


def _trainable_count(profile: Profile, plan: Plan, component: Component, *, total: int) -> tuple[int, int]:
    """(frozen, trainable) parameters of one component under its ComponentPlan.

    LoRA: the base stays frozen, adapters r*(d_in+d_out) per wrapped linear are trained; each
    modules_to_save entry adds a trainable copy (V*h) beside the frozen original (peft
    ModulesToSaveWrapper), so tied embeddings become two trained copies.
    """
    part = plan.components.get(component)
    if plan.mode != "train" or part.train == "frozen":
        return total, 0
    if part.train == "full":
        return 0, total
    trainable = 0
    if component is Component.LLM and profile.llm is not None:
        lora = part.lora
        trainable = profile.llm.lora_params(lora.rank, lora.targets)
        if plan.stack.embeddings_training == "in_place":
            trained = embeddings_in_place(profile, plan)
            return total - trained, trainable + trained
        trainable += len(part.modules_to_save) * profile.llm.embedding_params
    elif component is Component.VISION and profile.vision is not None:
        v = profile.vision
        h, f = v.hidden_size, v.intermediate_size
        per_layer = (h + 3 * h) + (h + h) + (h + f) + (f + h)  # qkv, proj, fc1, fc2
        trainable = v.num_layers * part.lora.rank * per_layer
    return total, trainable


def embeddings_in_place(profile: Profile, plan: Plan) -> int:
    """Embedding parameters trained in place (``get_input_embeddings().requires_grad_(True)`` on the
    base weights, and lm_head likewise): V*h per module named in modules_to_save, once when the
    embeddings are tied (one tensor)."""
    names = set(plan.components.llm.modules_to_save)
    if not names or profile.llm is None:
        return 0
    modules = 1 if profile.llm.tie_word_embeddings else len(names)
    return modules * profile.llm.embedding_params


def _copies(profile: Profile, plan: Plan, component: Component, *, trainable: int) -> int:
    """Trainable parameters that are copies or base weights rather than adapters: everything of a
    fully trained component, the modules_to_save copies (or in-place embeddings) of a LoRA LLM."""
    part = plan.components.get(component)
    if part.train == "full":
        return trainable
    if component is Component.LLM and profile.llm is not None and part.train == "lora":
        if plan.stack.embeddings_training == "in_place":
            return embeddings_in_place(profile, plan)
        return len(part.modules_to_save) * profile.llm.embedding_params
    return 0


def _dtype_bytes(plan: Plan, component: Component, behaviour: Behaviour) -> tuple[int, int, int]:
    """(frozen, adapter, copy) bytes per parameter as held by the model on the device.

    DeepSpeed bf16/fp16 casts the whole module to the compute dtype at initialize
    (deepspeed/runtime/engine.py, _configure_distributed_model), undoing an fp32 upcast.
    Plain PyTorch keeps what the recipe made. The sa2va harness: fp32 trainable parameters when
    master_weights (torch.autocast computes in 16 bit), the LLM wholly fp32 after
    prepare_model_for_kbit_training. Other stacks (memplan.estimate.stack): adapters in fp32 under
    peft's autocast_adapter_dtype (or as stack.adapter_dtype says), copies and fully trained weights
    in the weights' own dtype, no master copy.
    """
    compute = DTYPE_BYTES[plan.precision.compute]
    if plan.engine.kind == "deepspeed":
        return compute, compute, compute
    upcast = plan.precision.weights_fp32 or (plan.precision.llm_fp32_upcast and component is Component.LLM)
    frozen = 4 if upcast else compute
    if behaviour.adapters_fp32 is None:  # the harness's rule: one dtype for all that trains
        trainable = 4 if (upcast or plan.precision.master_weights) else compute
        return frozen, trainable, trainable
    adapter = 4 if (upcast or behaviour.adapters_fp32) else compute
    return frozen, adapter, frozen if behaviour.copies_in_base_dtype else adapter


UPSTREAM = {  # gradient paths of the Sa2VA wiring: vision -> projector -> LLM -> seg head -> decoder
    Component.VISION: (),
    Component.PROJECTOR: (Component.VISION,),
    Component.LLM: (Component.VISION, Component.PROJECTOR),
    Component.SEG_HEAD: (Component.LLM, Component.VISION, Component.PROJECTOR),
    Component.SAM2_DECODER: (Component.SEG_HEAD, Component.LLM, Component.VISION, Component.PROJECTOR),
    Component.SAM2_ENCODER: (),
}


def _graph(parts: dict[Component, PartCounts], training: bool, behaviour: Behaviour) -> dict[Component, bool]:
    """A component saves activations if it trains or a trained component lies upstream of it, or
    when an input-gradient hook on its embeddings makes its input require grad (a frozen vision
    tower under transformers 5's enable_input_require_grads: memplan.estimate.stack)."""
    trains = {c: training and p.trainable > 0 for c, p in parts.items()}
    graph = {c: trains[c] or any(trains.get(u, False) for u in UPSTREAM[c]) for c in parts}
    if Component.VISION in graph and behaviour.hooks_vision and training and any(trains.values()):
        graph[Component.VISION] = True
    return graph


_COMPONENTS = {c.value: c for c in Component}  # Enum(value) lookups are slow in a hot loop


def build_context(profile: Profile, plan: Plan) -> Context:
    behaviour = resolve(plan)
    parts: dict[Component, PartCounts] = {}
    for name, total in profile.component_params_cached.items():
        component = _COMPONENTS[name]
        frozen, trainable = _trainable_count(profile, plan, component, total=total)
        weight_bytes, adapter_bytes, copy_bytes = _dtype_bytes(plan, component, behaviour)
        copies = _copies(profile, plan, component, trainable=trainable) if trainable else 0
        parts[component] = PartCounts(total, frozen, trainable, weight_bytes, adapter_bytes, copies, copy_bytes)
    is_deepspeed = plan.engine.kind == "deepspeed"
    return Context(
        profile=profile, plan=plan, parts=parts, num_gpus=plan.hardware.num_gpus,
        zero_stage=plan.engine.zero_stage if is_deepspeed else 0, is_deepspeed=is_deepspeed,
        is_fsdp=plan.engine.kind == "fsdp2",
        training=plan.mode == "train", compute_bytes=DTYPE_BYTES[plan.precision.compute],
        total_trainable=sum(p.trainable for p in parts.values()), graph=_graph(parts, plan.mode == "train", behaviour),
        stack=behaviour,
    )
