"""Derived quantities every estimator needs, computed once per (profile, plan).

Nothing here allocates memory or imports torch: it turns the plan's choices into parameter counts
per component (frozen, trainable), dtype widths and the ZeRO sharding divisors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

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
    trainable_bytes: int  # bytes per trainable parameter as the model holds it


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

    def shard(self, num_bytes: int, *, at_stage: int) -> int:
        """ZeRO partitioning (Rajbhandari et al. 2019, arXiv 1910.02054): a state partitioned from
        stage ``at_stage`` on is held 1/N per GPU (ceil), else whole on every GPU."""
        if self.is_deepspeed and self.zero_stage >= at_stage and self.num_gpus > 1:
            return -(-num_bytes // self.num_gpus)
        return num_bytes


def _trainable_count(profile: Profile, plan: Plan, component: Component, total: int) -> tuple[int, int]:
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
        trainable += len(part.modules_to_save) * profile.llm.embedding_params
    elif component is Component.VISION and profile.vision is not None:
        v = profile.vision
        h, f = v.hidden_size, v.intermediate_size
        per_layer = (h + 3 * h) + (h + h) + (h + f) + (f + h)  # qkv, proj, fc1, fc2
        trainable = v.num_layers * part.lora.rank * per_layer
    return total, trainable


def _dtype_bytes(plan: Plan, component: Component) -> tuple[int, int]:
    """(frozen, trainable) bytes per parameter as held by the model on the device.

    DeepSpeed bf16/fp16 casts the whole module to the compute dtype at initialize
    (deepspeed/runtime/engine.py, _configure_distributed_model), undoing an fp32 upcast.
    Plain PyTorch keeps what the recipe made: fp32 trainable parameters when master_weights
    (torch.autocast computes in 16 bit), the LLM wholly fp32 after prepare_model_for_kbit_training.
    """
    compute = DTYPE_BYTES[plan.precision.compute]
    if plan.engine.kind == "deepspeed":
        return compute, compute
    upcast = plan.precision.llm_fp32_upcast and component is Component.LLM
    frozen = 4 if upcast else compute
    trainable = 4 if (upcast or plan.precision.master_weights) else compute
    return frozen, trainable


UPSTREAM = {  # gradient paths of the Sa2VA wiring: vision -> projector -> LLM -> seg head -> decoder
    Component.VISION: (),
    Component.PROJECTOR: (Component.VISION,),
    Component.LLM: (Component.VISION, Component.PROJECTOR),
    Component.SEG_HEAD: (Component.LLM, Component.VISION, Component.PROJECTOR),
    Component.SAM2_DECODER: (Component.SEG_HEAD, Component.LLM, Component.VISION, Component.PROJECTOR),
    Component.SAM2_ENCODER: (),
}


def _graph(parts: dict[Component, PartCounts], training: bool) -> dict[Component, bool]:
    """A component saves activations if it trains or a trained component lies upstream of it."""
    trains = {c: training and p.trainable > 0 for c, p in parts.items()}
    return {c: trains[c] or any(trains.get(u, False) for u in UPSTREAM[c]) for c in parts}


_COMPONENTS = {c.value: c for c in Component}  # Enum(value) lookups are slow in a hot loop


def build_context(profile: Profile, plan: Plan) -> Context:
    parts: dict[Component, PartCounts] = {}
    for name, total in profile.component_params_cached.items():
        component = _COMPONENTS[name]
        frozen, trainable = _trainable_count(profile, plan, component, total)
        weight_bytes, trainable_bytes = _dtype_bytes(plan, component)
        parts[component] = PartCounts(total, frozen, trainable, weight_bytes, trainable_bytes)
    is_deepspeed = plan.engine.kind == "deepspeed"
    return Context(
        profile=profile, plan=plan, parts=parts, num_gpus=plan.hardware.num_gpus,
        zero_stage=plan.engine.zero_stage if is_deepspeed else 0, is_deepspeed=is_deepspeed,
        is_fsdp=plan.engine.kind == "fsdp2",
        training=plan.mode == "train", compute_bytes=DTYPE_BYTES[plan.precision.compute],
        total_trainable=sum(p.trainable for p in parts.values()), graph=_graph(parts, plan.mode == "train"),
    )
