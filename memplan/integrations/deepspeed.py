"""DeepSpeed JSON configs and launch lines built from a memplan ``Plan`` (pure Python, no torch).

The keys follow DeepSpeed 0.19's config reference (deepspeed/runtime/config.py,
deepspeed/runtime/zero/config.py, deepspeed/runtime/zero/offload_config.py). The optimizer follows
the Sa2VA recipe (memplan/spec/hyperparameters.py: AdamW lr 4e-5, weight decay 0.05, clipping 1.0):

- ``adamw``: ``torch_adam: true`` makes DeepSpeed build ``torch.optim.AdamW`` (``foreach`` passed on);
- ``fused_adam``: DeepSpeed's FusedAdam (a JIT-built CUDA op);
- ``cpu_adam`` or any optimizer offload: DeepSpeedCPUAdam (DeepSpeed picks it for type AdamW when
  ``offload_optimizer`` is set and ``torch_adam`` is off);
- ``sgd``: ``torch.optim.SGD`` (``zero_allow_untested_optimizer`` set, since ZeRO only vouches for Adam);
- ``adam8bit``: no optimizer section; the probe passes a bitsandbytes optimizer object instead.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from memplan.integrations import plan_path_for
from memplan.spec.hyperparameters import BETAS, EPSILON, GRADIENT_CLIPPING, LEARNING_RATE, WEIGHT_DECAY
from memplan.spec.plan import Plan

NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# What each variable does (printed above the launch line; docs/launch.md says more):
NCCL_ENV_WHY = {
    "NCCL_NVLS_ENABLE": "NCCL's NVLink SHARP (multicast) algorithms off: they reserve extra device memory "
                        "per communicator and need NVSwitch multicast support",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "PyTorch symmetric memory without multicast objects",
    "NVSHMEM_DISABLE_NVLS": "NVSHMEM (used by some PyTorch collectives) without NVLink SHARP",
}


def launch_comment() -> str:
    """The shell comment printed above a launch line: what its environment variables do, and why."""
    lines = [f"#   {key}={NCCL_ENV[key]}: {why}" for key, why in NCCL_ENV_WHY.items()]
    return "\n".join(["# NVLink multicast kept off, as on the machines memplan was measured on "
                      "(drop these where multicast works and memory is not tight):", *lines])


def _offload(device: str, *, with_buffers: bool = False) -> dict[str, Any]:
    """An offload section: device cpu/nvme, pinned host memory (DeepSpeed's default, stated)."""
    section: dict[str, Any] = {"device": device, "pin_memory": True}
    if device == "nvme":
        section["nvme_path"] = "/local_nvme"
    if with_buffers and device == "nvme":
        section["buffer_count"] = 5
    return section


def zero_section(plan: Plan) -> dict[str, Any]:
    """The ``zero_optimization`` block: stage, offload, buckets, overlap and the stage-3 knobs."""
    engine = plan.engine
    zero: dict[str, Any] = {
        "stage": engine.zero_stage,
        "reduce_bucket_size": engine.reduce_bucket_size,
        "allgather_bucket_size": engine.allgather_bucket_size,
        "overlap_comm": engine.overlap,
        "contiguous_gradients": engine.contiguous_gradients,
    }
    if engine.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(engine.offload_optimizer)
    if engine.zero_stage == 3:
        if engine.offload_params != "none":
            zero["offload_param"] = _offload(engine.offload_params, with_buffers=True)
        zero.update(
            stage3_prefetch_bucket_size=engine.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=engine.stage3_param_persistence_threshold,
            stage3_max_live_parameters=engine.stage3_max_live_parameters,
            stage3_max_reuse_distance=engine.stage3_max_reuse_distance,
        )
    return zero


def optimizer_section(plan: Plan) -> dict[str, Any] | None:
    """The ``optimizer`` block (None for adam8bit, which is passed to deepspeed.initialize as an object)."""
    kind = plan.optimizer.kind
    if kind == "adam8bit":
        return None
    if kind == "sgd":
        return {"type": "SGD", "params": {"lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "momentum": 0.0}}
    params: dict[str, Any] = {
        "lr": LEARNING_RATE,
        "betas": list(BETAS),
        "eps": EPSILON,
        "weight_decay": WEIGHT_DECAY,
    }
    offloading = plan.engine.offload_optimizer != "none"
    if kind == "adamw" and not offloading:
        params.update(torch_adam=True, adam_w_mode=True, foreach=plan.optimizer.foreach)
    return {"type": "AdamW", "params": params}


def deepspeed_config(plan: Plan) -> dict[str, Any]:
    """A DeepSpeed config dict for ``plan`` (one micro-batch per step: gradient_accumulation_steps 1)."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.inputs.micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": GRADIENT_CLIPPING,
        "bf16": {"enabled": plan.precision.compute == "bf16"},
        "fp16": {"enabled": plan.precision.compute == "fp16", "initial_scale_power": 16},
        "zero_optimization": zero_section(plan),
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    optimizer = optimizer_section(plan)
    if optimizer is not None:
        config["optimizer"] = optimizer
    if plan.optimizer.kind in ("sgd", "adam8bit") and plan.engine.zero_stage > 0:
        config["zero_allow_untested_optimizer"] = True
    if plan.optimizer.kind == "adam8bit" and plan.engine.offload_optimizer != "none":
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def launch_command(plan: Plan, script: str, *, args: str = "") -> str:
    """The shell line that starts ``script`` on ``plan.hardware.num_gpus`` GPUs of one host.

    DeepSpeed engines use the ``deepspeed`` launcher, plain PyTorch uses ``torchrun``; both get the
    NCCL settings that keep NVLink multicast off (launch_comment says why; docs/launch.md), and
    PYTORCH_CUDA_ALLOC_CONF where the plan's allocator is expandable segments.
    """
    from memplan.spec.allocator import launch_env

    gpus = plan.hardware.num_gpus
    env = " ".join(f"{key}={value}" for key, value in {**NCCL_ENV, **launch_env(plan.stack.allocator)}.items())
    tail = f"{shlex.quote(script)}{' ' + args if args else ''}"
    if plan.engine.kind == "deepspeed":
        return f"{env} deepspeed --num_gpus={gpus} {tail}"
    return f"{env} torchrun --standalone --nproc_per_node={gpus} {tail}"


def check_emittable(plan: Plan, name: str) -> None:
    """A DeepSpeed training config exists only for mode=train on engine.kind=deepspeed (InputError otherwise)."""
    from memplan.spec.loading import InputError

    if plan.mode != "train":
        raise InputError(f"--emit-deepspeed: plan {name!r} is mode={plan.mode}; a DeepSpeed training config needs mode=train")
    if plan.engine.kind != "deepspeed":
        raise InputError(f"--emit-deepspeed: plan {name!r} uses engine.kind={plan.engine.kind}, not deepspeed")


def write_config(plan: Plan, *, model: str, name: str, target: Path) -> Path:
    """Write the plan's DeepSpeed config to ``target`` and, beside it, the plan it was made for
    (with its model named); return the plan file. An unwritable target is an InputError."""
    import json

    import yaml

    from memplan.spec.loading import InputError

    plan_file = plan_path_for(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(deepspeed_config(plan), indent=2) + "\n", encoding="utf-8")
        plan_data = plan.model_copy(update={"model": model}).model_dump(mode="json")
        plan_file.write_text(f"# memplan plan {name}: the plan {target.name} was emitted for\n"
                             + yaml.safe_dump(plan_data, sort_keys=False), encoding="utf-8")
    except OSError as error:
        raise InputError(f"--emit-deepspeed={target}: cannot write ({error.strerror or error})") from None
    return plan_file
