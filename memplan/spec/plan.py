"""Training plans: hardware, engine, precision, optimizer, what trains, and input shapes, as data.

A plan is a YAML file (``plans/``) or flags on the command line; both land in the frozen pydantic
``Plan`` below, whose validators reject impossible combinations with the numbers that disagree.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from memplan.spec.vocabulary import MODEL_COMPONENTS, Component


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Offload = Literal["none", "cpu", "nvme"]
Training = Literal["frozen", "full", "lora"]


class Hardware(Section):
    """GPUs in all (``num_gpus``, the data-parallel world size) on ``nodes`` hosts of equal size.

    A plan may give ``gpus_per_node`` instead of ``num_gpus`` (num_gpus = nodes x gpus_per_node);
    host_ram_gib is per node (each node holds its own ranks' offloaded state and processes).
    """

    num_gpus: int = Field(default=1, gt=0, le=65536)
    nodes: int = Field(default=1, gt=0, le=4096)
    vram_gib: float = Field(default=24.0, gt=0, le=4096)
    host_ram_gib: float = Field(default=256.0, gt=0, le=2**20)  # up to 1 PiB
    gpu: str | None = None  # a name from memplan.spec.gpus (step-time model); None: generic card

    @model_validator(mode="before")
    @classmethod
    def _per_node(cls, data):
        if not isinstance(data, dict) or "gpus_per_node" not in data:
            return data
        data = dict(data)
        per_node = data.pop("gpus_per_node")
        nodes = data.get("nodes", 1)
        if not isinstance(per_node, int) or isinstance(per_node, bool) or per_node < 1:
            raise ValueError(f"hardware.gpus_per_node={per_node!r} must be a positive integer")
        if isinstance(nodes, int) and "num_gpus" in data and data["num_gpus"] != nodes * per_node:
            raise ValueError(f"hardware.num_gpus={data['num_gpus']} != nodes({nodes}) x gpus_per_node({per_node})")
        if isinstance(nodes, int):
            data["num_gpus"] = nodes * per_node
        return data

    @model_validator(mode="after")
    def _whole_nodes(self) -> "Hardware":
        if self.num_gpus % self.nodes:
            raise ValueError(f"hardware.num_gpus={self.num_gpus} is not a multiple of hardware.nodes={self.nodes}"
                             " (nodes of equal size)")
        return self

    @property
    def gpus_per_node(self) -> int:
        return self.num_gpus // self.nodes


class Fsdp(Section):
    """PyTorch FSDP2 (torch.distributed.fsdp.fully_shard) as memplan applies it: one unit per decoder
    layer of the LLM and per layer of the vision tower (the transformers GradientCheckpointingLayer
    modules), one per SAM2 encoder and decoder, and the root (embeddings, lm_head, projector, seg head).

    - reshard_after_forward: free each unit's unsharded parameters after its forward (re-all-gather in
      backward); the root is never resharded after forward (fully_shard's default for the root).
    - param_dtype / reduce_dtype: MixedPrecisionPolicy (None: no cast; all-gather and reduce in the
      parameters' own dtype). param_dtype "compute" is the plan's precision.compute.
    - offload: CPUOffloadPolicy (sharded parameters, gradients and the optimizer step on the host).
    - hsdp: shard within a node, replicate across nodes (a 2-D mesh (nodes, gpus_per_node)).
    - embeddings_unit: embed_tokens and lm_head get their own units (torchtitan's layout); false: they
      stay in the root, as accelerate's TRANSFORMER_BASED_WRAP leaves them.
    - The sharded parameters are held in their original dtype: fp32 for trainable parameters when
      precision.master_weights (the sharded fp32 parameter is the master), frozen ones in the compute dtype.
    """

    reshard_after_forward: bool = True
    param_dtype: Literal["compute", "fp32"] | None = "compute"
    reduce_dtype: Literal["compute", "fp32"] | None = "fp32"
    offload: bool = False
    hsdp: bool = False
    embeddings_unit: bool = True


class Engine(Section):
    """Plain PyTorch (DDP across GPUs), DeepSpeed ZeRO 0-3 with DeepSpeed's knobs and defaults, or
    PyTorch FSDP2 (``kind: fsdp2`` with the ``fsdp`` section).

    Defaults are DeepSpeed 0.19's (deepspeed/runtime/zero/config.py): buckets 5e8 elements,
    stage-3 prefetch 5e7, persistence threshold 1e5, max live parameters 1e9, hpZ partition size 1
    (off). MiCS (mics_shard_size) was removed in DeepSpeed 0.19 (deepspeed/runtime/config.py,
    _REMOVED_ZERO_CONFIG_KEYS) and is refused.
    """

    kind: Literal["pytorch", "deepspeed", "fsdp2"] = "deepspeed"
    zero_stage: int = Field(default=2, ge=0, le=3)
    offload_optimizer: Offload = "none"
    offload_params: Offload = "none"
    reduce_bucket_size: int = Field(default=500_000_000, gt=0)
    allgather_bucket_size: int = Field(default=500_000_000, gt=0)
    overlap_comm: bool | None = None  # None: DeepSpeed's default (True at stage 3, else False)
    contiguous_gradients: bool = True
    stage3_prefetch_bucket_size: int = Field(default=50_000_000, ge=0)
    stage3_param_persistence_threshold: int = Field(default=100_000, ge=0)
    stage3_max_live_parameters: int = Field(default=1_000_000_000, ge=0)
    stage3_max_reuse_distance: int = Field(default=1_000_000_000, ge=0)
    zero3_init: bool = True  # build under deepspeed.zero.Init (partition at construction)
    # ZeRO++ hpZ: a secondary copy of each parameter partitioned over this many ranks (one node)
    zero_hpz_partition_size: int = Field(default=1, ge=1, le=4096)
    fsdp: Fsdp | None = None  # kind fsdp2 only (None there: Fsdp's defaults)

    @model_validator(mode="after")
    def _consistent(self) -> "Engine":
        if self.kind == "fsdp2":
            if "zero_stage" in self.model_fields_set and self.zero_stage != 0:
                raise ValueError(f"engine.zero_stage={self.zero_stage}: a DeepSpeed option, but engine.kind=fsdp2 "
                                 "(FSDP2 shards parameters, gradients and optimizer state: ZeRO-3's layout)")
            for which in ("offload_optimizer", "offload_params"):
                if getattr(self, which) != "none":
                    raise ValueError(f"engine.{which}={getattr(self, which)}: a DeepSpeed option, but "
                                     "engine.kind=fsdp2 (use engine.fsdp.offload: true, FSDP2's CPUOffloadPolicy)")
            object.__setattr__(self, "zero_stage", 0)  # not a DeepSpeed stage: dumps and reloads as 0
            if self.fsdp is None:
                object.__setattr__(self, "fsdp", Fsdp())
            return self
        if self.fsdp is not None:
            raise ValueError(f"engine.fsdp is set but engine.kind={self.kind} (needs engine.kind=fsdp2)")
        if self.zero_hpz_partition_size > 1 and (self.kind != "deepspeed" or self.zero_stage != 3):
            raise ValueError(f"engine.zero_hpz_partition_size={self.zero_hpz_partition_size} needs ZeRO-3 "
                             f"(engine.kind=deepspeed, zero_stage=3), not {self.kind} stage {self.zero_stage}")
        if self.kind == "pytorch":
            if self.zero_stage != 0:
                raise ValueError(f"engine.zero_stage={self.zero_stage} needs engine.kind=deepspeed, not pytorch")
            if self.offload_optimizer != "none" or self.offload_params != "none":
                which = "offload_optimizer" if self.offload_optimizer != "none" else "offload_params"
                raise ValueError(
                    f"engine.{which}={getattr(self, which)} needs engine.kind=deepspeed, not pytorch (allowed: none)"
                )
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError(
                f"engine.offload_params={self.offload_params} needs zero_stage=3, not {self.zero_stage}"
                " (parameter offload is a ZeRO-3 feature)"
            )
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError(
                f"engine.offload_optimizer={self.offload_optimizer} needs engine.zero_stage >= 1, not 0"
            )
        return self

    @property
    def overlap(self) -> bool:
        return self.overlap_comm if self.overlap_comm is not None else self.zero_stage == 3


class Precision(Section):
    compute: Literal["bf16", "fp16", "fp32"] = "bf16"
    master_weights: bool = True  # fp32 master copy of trainable params (mixed precision)
    llm_fp32_upcast: bool = False  # peft.prepare_model_for_kbit_training on an unquantized LLM
    weights_fp32: bool = False  # the whole model held in fp32 (loaded as float32), computed under autocast


class Optimizer(Section):
    kind: Literal["adamw", "fused_adam", "cpu_adam", "adam8bit", "sgd"] = "adamw"
    foreach: bool = True  # torch.optim.AdamW's multi-tensor path (temporaries during step)


class LoRA(Section):
    rank: int = Field(default=128, gt=0, le=4096)
    alpha: int = Field(default=256, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    targets: tuple[str, ...] | None = None  # None: every nn.Linear of the decoder layers


class ComponentPlan(Section):
    train: Training = "frozen"
    checkpointing: bool = False
    lora: LoRA | None = None
    modules_to_save: tuple[Literal["embed_tokens", "lm_head"], ...] = ()

    @model_validator(mode="after")
    def _lora_when_lora(self) -> "ComponentPlan":
        if self.train == "lora" and self.lora is None:
            object.__setattr__(self, "lora", LoRA())
        if self.modules_to_save and self.train == "frozen":
            raise ValueError(f"modules_to_save={list(self.modules_to_save)} needs train=lora or full, not frozen")
        return self


class Components(Section):
    """Per component: frozen, full or LoRA; gradient checkpointing. Defaults: the Sa2VA recipe."""

    llm: ComponentPlan = ComponentPlan(
        train="lora", checkpointing=True, lora=LoRA(), modules_to_save=("embed_tokens", "lm_head")
    )
    vision: ComponentPlan = ComponentPlan()
    projector: ComponentPlan = ComponentPlan(train="full")
    sam2_encoder: ComponentPlan = ComponentPlan()
    sam2_decoder: ComponentPlan = ComponentPlan(train="full")
    seg_head: ComponentPlan = ComponentPlan(train="full")

    def get(self, component: Component) -> ComponentPlan:
        return getattr(self, component.value)

    @model_validator(mode="after")
    def _lora_only_for_llm(self) -> "Components":
        for component in MODEL_COMPONENTS:
            part = self.get(component)
            if part.train == "lora" and component not in (Component.LLM, Component.VISION):
                raise ValueError(
                    f"components.{component.value}.train=lora: LoRA is supported for llm and vision only "
                    "(allowed here: frozen, full)"
                )
            if part.modules_to_save and component is not Component.LLM:
                raise ValueError(
                    f"components.{component.value}.modules_to_save={list(part.modules_to_save)}: applies to llm only"
                )
        return self


class Inputs(Section):
    micro_batch: int = Field(default=1, gt=0, le=1024)
    # LLM sequence incl. image tokens: 13 tiles (3,328 image tokens) + 768 text tokens, a long
    # single-image sample; the recipe's max_length 8192 is the cap (--text-len 8192: worst case).
    text_tokens: int = Field(default=4096, gt=0, le=1_048_576)
    tiles: int = Field(default=13, ge=0, le=64)  # 448px tiles per image (12 + thumbnail); 0: text only
    frames: int = Field(default=0, ge=0, le=256)  # video frames, one tile each, on top of tiles
    sam2_resolution: int = Field(default=1024, ge=64, le=4096)
    objects: int = Field(default=5, ge=0, le=64)  # masks per sample through the SAM2 decoder
    output_hidden_states: bool = True  # the Sa2VA recipe asks the LLM for every layer's output

    @model_validator(mode="after")
    def _resolution_multiple(self) -> "Inputs":
        if self.sam2_resolution % 64:
            raise ValueError(f"inputs.sam2_resolution={self.sam2_resolution} must be a multiple of 64 (Hiera strides)")
        return self


StackKind = Literal["sa2va", "hf-trainer", "accelerate", "custom-loop"]


class Stack(Section):
    """The training stack the user's script runs on, and the behaviours it implies for memory.

    ``kind`` gives defaults; each behaviour is also a knob of its own (None: the stack's default,
    resolved by memplan.estimate.stack, which says what it assumed):
    - adapter_dtype: LoRA adapters' dtype. fp32 is peft's ``autocast_adapter_dtype=True`` default on
      a bf16 model (peft/tuners/tuners_utils.py); compute: cast to the compute dtype (DeepSpeed's
      bf16 engine does this to the whole module).
    - embeddings_training: embed_tokens/lm_head trained as peft ``modules_to_save`` copies or in
      place (``get_input_embeddings().requires_grad_(True)`` on the base weights).
    - input_grad_hooks: which towers ``enable_input_require_grads`` hooks (transformers 5 hooks every
      PreTrainedModel inside the model, 4.x only the top model's embeddings).
    - keeps_outputs: the loop keeps the model output (logits) alive through backward.
    - checkpoint_scope: model (``model.gradient_checkpointing_enable()`` or Trainer's
      ``gradient_checkpointing=True`` on the top model checkpoints every GradientCheckpointingLayer,
      the vision tower's too) or components (only what components.*.checkpointing names).
    - autocast: the forward runs under torch.autocast in the compute dtype (Trainer with bf16=True,
      accelerate with mixed_precision=bf16).
    - fused_optimizer: torch.optim.AdamW(fused=True), Trainer's default adamw_torch_fused.
    - loss: full_vocab (HF ForCausalLMLoss materialises logits) or chunked (a fused/chunked
      cross-entropy, such as Liger's, never materialises them).
    - transformers_version: the version whose behaviour to assume (None: the installed one).
    - allocator: PyTorch's CUDA caching allocator as the run sets it (PYTORCH_CUDA_ALLOC_CONF):
      default (cudaMalloc segments, which strand freed blocks) or expandable_segments
      (``expandable_segments:True``: one growing virtual segment per stream, whose free pages are
      unmapped before an allocation fails). It moves what a card must hold, not what is allocated
      (memplan.estimate.overhead.needed_bytes).
    """

    kind: StackKind = "sa2va"
    adapter_dtype: Literal["fp32", "compute"] | None = None
    embeddings_training: Literal["copies", "in_place"] = "copies"
    input_grad_hooks: Literal["llm", "all_towers", "none"] | None = None
    keeps_outputs: bool | None = None
    loss: Literal["full_vocab", "chunked"] = "full_vocab"
    checkpoint_scope: Literal["model", "components"] | None = None  # what LLM checkpointing switches on
    autocast: bool | None = None  # the forward runs under torch.autocast (Trainer bf16=True: yes)
    fused_optimizer: bool | None = None  # torch AdamW fused=True (Trainer's adamw_torch_fused): no temporaries
    transformers_version: str | None = Field(default=None, max_length=40)
    allocator: Literal["default", "expandable_segments"] = "default"


class Plan(Section):
    name: str = "plan"
    description: str = ""
    model: str | None = None  # profile name or path this plan is for (--model overrides)
    mode: Literal["train", "inference"] = "train"
    hardware: Hardware = Hardware()
    engine: Engine = Engine()
    precision: Precision = Precision()
    optimizer: Optimizer = Optimizer()
    attention: Literal["eager", "sdpa", "flash"] = "sdpa"
    stack: Stack = Stack()
    components: Components = Components()
    inputs: Inputs = Inputs()

    @model_validator(mode="after")
    def _groups_divide_world(self) -> "Plan":
        hpz, gpus = self.engine.zero_hpz_partition_size, self.hardware.num_gpus
        if hpz > 1 and gpus % hpz:
            raise ValueError(f"engine.zero_hpz_partition_size={hpz} must divide hardware.num_gpus={gpus}")
        return self

    @model_validator(mode="after")
    def _optimizer_matches_engine(self) -> "Plan":
        if self.optimizer.kind == "cpu_adam" and self.engine.offload_optimizer == "none":
            raise ValueError(
                f"optimizer.kind=cpu_adam needs engine.offload_optimizer=cpu or nvme, not {self.engine.offload_optimizer}"
            )
        if self.optimizer.kind in ("fused_adam", "cpu_adam") and self.engine.kind != "deepspeed":
            raise ValueError(
                f"optimizer.kind={self.optimizer.kind} needs engine.kind=deepspeed, not {self.engine.kind}"
            )
        return self

    def trains(self, component: Component) -> bool:
        return self.mode == "train" and self.components.get(component).train != "frozen"
