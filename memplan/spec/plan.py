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
    num_gpus: int = Field(default=1, gt=0, le=1024)
    vram_gib: float = Field(default=24.0, gt=0, le=4096)
    host_ram_gib: float = Field(default=256.0, gt=0, le=2**20)  # up to 1 PiB
    gpu: str | None = None  # a name from memplan.spec.gpus (step-time model); None: generic card


class Engine(Section):
    """Plain PyTorch (DDP across GPUs) or DeepSpeed ZeRO 0-3, with DeepSpeed's knobs and defaults.

    Defaults are DeepSpeed 0.19's (deepspeed/runtime/zero/config.py): buckets 5e8 elements,
    stage-3 prefetch 5e7, persistence threshold 1e5, max live parameters 1e9.
    """

    kind: Literal["pytorch", "deepspeed"] = "deepspeed"
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

    @model_validator(mode="after")
    def _consistent(self) -> "Engine":
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
    - autocast: the forward runs under torch.autocast in the compute dtype (Trainer with bf16=True,
      accelerate with mixed_precision=bf16).
    - fused_optimizer: torch.optim.AdamW(fused=True), Trainer's default adamw_torch_fused.
    - loss: full_vocab (HF ForCausalLMLoss materialises logits) or chunked (a fused/chunked
      cross-entropy, such as Liger's, never materialises them).
    - transformers_version: the version whose behaviour to assume (None: the installed one).
    """

    kind: StackKind = "sa2va"
    adapter_dtype: Literal["fp32", "compute"] | None = None
    embeddings_training: Literal["copies", "in_place"] = "copies"
    input_grad_hooks: Literal["llm", "all_towers", "none"] | None = None
    keeps_outputs: bool | None = None
    loss: Literal["full_vocab", "chunked"] = "full_vocab"
    autocast: bool | None = None  # the forward runs under torch.autocast (Trainer bf16=True: yes)
    fused_optimizer: bool | None = None  # torch AdamW fused=True (Trainer's adamw_torch_fused): no temporaries
    transformers_version: str | None = Field(default=None, max_length=40)


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
