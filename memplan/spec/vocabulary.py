"""The one vocabulary shared by estimators, the probe and every report.

An estimate and a measurement line up row by row because both speak these enums
(the idea follows torch/distributed/_tools/mem_tracker.py's ``_MemRefType``).
"""

from __future__ import annotations

from enum import Enum


class Category(str, Enum):
    """What a block of device memory holds."""

    WEIGHTS = "weights"  # frozen / base parameters resident on the GPU
    TRAINABLE_WEIGHTS = "trainable_weights"  # adapters, modules_to_save copies, trained params
    GRADIENTS = "gradients"
    OPTIMIZER_STATE = "optimizer_state"
    MASTER_WEIGHTS = "master_weights"  # fp32 copies kept by a mixed-precision optimizer
    ACTIVATIONS = "activations"  # tensors saved for backward (or live in inference)
    TRANSIENT = "transient_buffers"  # short-lived workspaces: logits/loss, recompute, optimizer temporaries
    DEEPSPEED_BUFFERS = "deepspeed_buffers"  # ZeRO buckets, prefetch, gathered parameters
    FSDP_BUFFERS = "fsdp_buffers"  # FSDP2 unsharded (all-gathered) units, reduce-scatter buffers


class Component(str, Enum):
    """Which part of the model (or of the runtime) a block belongs to."""

    LLM = "llm"
    VISION = "vision"
    PROJECTOR = "projector"
    SAM2_ENCODER = "sam2_encoder"
    SAM2_DECODER = "sam2_decoder"
    SEG_HEAD = "seg_head"
    RUNTIME = "runtime"  # engine buffers, context: not owned by one model part


MODEL_COMPONENTS: tuple[Component, ...] = tuple(c for c in Component if c is not Component.RUNTIME)


class Phase(str, Enum):
    """Points of a training step at which the probe reads the allocator and the estimate sums."""

    INIT = "init"
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER_STEP = "optimizer_step"


class Verdict(str, Enum):
    FITS = "fits"
    OOM = "oom"
