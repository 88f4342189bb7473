"""An accelerate config for an FSDP2 plan (``--emit-fsdp FILE``), the plan it runs, and the launch line.

The config is what ``accelerate config`` writes for FSDP (accelerate/commands/config/config_args.py,
ClusterConfig; keys as accelerate/commands/launch.py reads them into FSDP_* variables for
FullyShardedDataParallelPlugin, accelerate/utils/dataclasses.py):
fsdp_version 2, TRANSFORMER_BASED_WRAP over the layer classes memplan shards (decoder layers, ViT
layers, the SAM2 image encoder), reshard_after_forward and CPU offload from the plan, HSDP as
accelerate's parallelism_config (dp_replicate_size = nodes, dp_shard_size = GPUs per node).

Two of accelerate's choices differ from memplan's FSDP2 defaults, so the plan written beside the
config says what accelerate will do: its MixedPrecisionPolicy reduces in the mixed-precision dtype
(FullyShardedDataParallelPlugin.set_mixed_precision: reduce_dtype = param_dtype = bf16), and
TRANSFORMER_BASED_WRAP leaves embed_tokens and lm_head in the root (embeddings_unit: false).
Activation checkpointing stays with the training script (per component, as the plan says), so
fsdp_activation_checkpointing is false.
"""

from __future__ import annotations

import shlex
from typing import Any

from memplan.spec.loading import InputError
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

# transformers module classes of the units memplan.probe.fsdp shards (modeling_*.py of each family)
LLM_LAYER_CLASSES = {"qwen2": "Qwen2DecoderLayer", "qwen3": "Qwen3DecoderLayer"}  # else LlamaDecoderLayer
VISION_LAYER_CLASSES = {"internvit": "InternVLVisionLayer", "qwen2_5_vl": "Qwen2_5_VLVisionBlock",
                        "qwen3_vl": "Qwen3VLVisionBlock"}
SAM2_ENCODER_CLASS = "Sam2VisionModel"
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


def check_fsdp_plan(plan: Plan, name: str) -> None:
    if plan.engine.kind != "fsdp2" or plan.mode != "train":
        raise InputError(f"--emit-fsdp: plan {name!r} has engine.kind={plan.engine.kind}, mode={plan.mode}; "
                         "an FSDP2 config needs engine.kind=fsdp2 (--engine fsdp2) and mode=train")


def layer_classes(profile: Profile) -> list[str]:
    """Class names for fsdp_transformer_layer_cls_to_wrap, in forward order."""
    names = []
    if profile.vision is not None:
        names.append(VISION_LAYER_CLASSES[profile.vision.architecture])
    if profile.llm is not None:
        names.append(LLM_LAYER_CLASSES.get(profile.llm.architecture, "LlamaDecoderLayer"))
    if profile.sam2 is not None:
        names.append(SAM2_ENCODER_CLASS)
    return names


def accelerate_plan(plan: Plan) -> Plan:
    """The plan as accelerate runs it: reduce in the compute dtype, embeddings in the root."""
    mixed = plan.precision.compute != "fp32"
    fsdp = plan.engine.fsdp.model_copy(update={
        "param_dtype": "compute" if mixed else None, "reduce_dtype": "compute" if mixed else None,
        "embeddings_unit": False})
    return plan.model_copy(update={"engine": plan.engine.model_copy(update={"fsdp": fsdp})})


def accelerate_config(profile: Profile, plan: Plan) -> dict[str, Any]:
    """The accelerate YAML config (a dict) for ``plan`` on its hardware."""
    hardware, fsdp = plan.hardware, plan.engine.fsdp
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP",
        "mixed_precision": MIXED_PRECISION[plan.precision.compute],
        "use_cpu": False,
        "downcast_bf16": "no",
        "num_machines": hardware.nodes,
        "num_processes": hardware.num_gpus,
        "machine_rank": 0,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": ",".join(layer_classes(profile)),
            "fsdp_reshard_after_forward": fsdp.reshard_after_forward,
            "fsdp_offload_params": fsdp.offload,
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_activation_checkpointing": False,
        },
    }
    if fsdp.hsdp and hardware.nodes > 1:
        config["parallelism_config"] = {"parallelism_config_dp_replicate_size": hardware.nodes,
                                        "parallelism_config_dp_shard_size": hardware.gpus_per_node}
    return config


def launch_line(plan: Plan, config_path: str, script: str, *, args: str = "") -> str:
    """``accelerate launch`` with the config; on several nodes each node passes its rank and the master;
    PYTORCH_CUDA_ALLOC_CONF first where the plan's allocator is expandable segments."""
    from memplan.spec.allocator import launch_env

    env = "".join(f"{key}={value} " for key, value in launch_env(plan.stack.allocator).items())
    head = f"{env}accelerate launch --config_file {shlex.quote(config_path)}"
    if plan.hardware.nodes > 1:
        head += " --machine_rank $NODE_RANK --main_process_ip $MASTER_ADDR --main_process_port 29500"
    return f"{head} {shlex.quote(script)}{' ' + args if args else ''}"
