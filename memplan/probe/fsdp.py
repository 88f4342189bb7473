"""The FSDP2 engine of the probe, and the fake world: rank 0 of an N-rank job on one device.

``fsdp2_engine`` applies ``torch.distributed.fsdp.fully_shard`` the way memplan.estimate.fsdp counts
units: each transformers GradientCheckpointingLayer of the LLM and the vision tower (decoder and ViT
layers), embed_tokens and lm_head (one unit when tied), the SAM2 vision encoder, then the root. MixedPrecisionPolicy and CPUOffloadPolicy follow the plan's ``engine.fsdp`` section;
HSDP is a 2-D DeviceMesh (replicate over nodes, shard over a node's GPUs).

The fake world (``memplan probe --fake-world N``, environment ``MEMPLAN_FAKE_WORLD=N``, memplan.probe.fake_world
sets it up in memplan.probe.distributed.ensure_distributed): one process
joins a process group of backend "fake" (torch.testing._internal.distributed.fake_pg, FakeStore) as
rank 0 of N. Every collective returns at once without moving data, but FSDP2 still allocates what it
allocates on rank 0 of a real N-rank job: its 1/N shards, the all-gather output of full units, the
reduce-scatter input of full gradients. The data are wrong (nothing was gathered); the sizes, and so
the memory, are those of the real job.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from memplan.spec.plan import Plan

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def device_mesh(plan: Plan, device: torch.device, world_size: int):
    """1-D mesh over every rank, or the HSDP mesh (nodes, gpus_per_node) named (replicate, shard)."""
    from torch.distributed.device_mesh import init_device_mesh

    hardware = plan.hardware
    if plan.engine.fsdp.hsdp and hardware.nodes > 1:
        if world_size != hardware.num_gpus:
            raise RuntimeError(f"hsdp: world size {world_size} != hardware.num_gpus={hardware.num_gpus}")
        return init_device_mesh(device.type, (hardware.nodes, hardware.gpus_per_node),
                                mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device.type, (world_size,))


def _dtype(plan: Plan, choice: str | None) -> torch.dtype | None:
    if choice is None:
        return None
    return DTYPES[plan.precision.compute] if choice == "compute" else DTYPES[choice]


def fsdp_kwargs(plan: Plan, mesh: Any) -> dict[str, Any]:
    """fully_shard keyword arguments from engine.fsdp (MixedPrecisionPolicy, CPUOffloadPolicy)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    fsdp = plan.engine.fsdp
    policy = MixedPrecisionPolicy(param_dtype=_dtype(plan, fsdp.param_dtype), reduce_dtype=_dtype(plan, fsdp.reduce_dtype))
    return {"mesh": mesh, "mp_policy": policy, "offload_policy": CPUOffloadPolicy() if fsdp.offload else OffloadPolicy()}


def shard_units(model: nn.Module, plan: Plan) -> list[nn.Module | list[nn.Module]]:
    """The modules (or tied module lists) that get their own fully_shard call, in forward order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    units: list[nn.Module | list[nn.Module]] = []
    vision, llm, sam2 = getattr(model, "vision", None), getattr(model, "llm", None), getattr(model, "sam2", None)
    if vision is not None:
        units += [m for m in vision.modules() if isinstance(m, GradientCheckpointingLayer)]
    if llm is not None and not plan.engine.fsdp.embeddings_unit:
        units += [m for m in llm.modules() if isinstance(m, GradientCheckpointingLayer)]
    elif llm is not None:
        embed, head = llm.get_input_embeddings(), llm.get_output_embeddings()
        embed = _wrapper_of(llm, embed)
        head = _wrapper_of(llm, head) if head is not None else None
        tied = head is not None and _shares_parameters(embed, head)
        units.append([embed, head] if tied else embed)
        units += [m for m in llm.modules() if isinstance(m, GradientCheckpointingLayer)]
        if head is not None and not tied:
            units.append(head)
    if sam2 is not None:
        # the SAM2 vision encoder only: the probe calls the mask decoder's conv_s0/conv_s1 outside its
        # forward, so the decoder stays in the root (unsharded with it)
        units += [sam2.vision_encoder] if getattr(sam2, "vision_encoder", None) is not None else []
    return units


def _wrapper_of(root: nn.Module, module: nn.Module) -> nn.Module:
    """peft's ModulesToSaveWrapper around ``module`` (the original and its trainable copy), if any."""
    for candidate in root.modules():
        if getattr(candidate, "original_module", None) is module:
            return candidate
    return module


def _shares_parameters(a: nn.Module, b: nn.Module) -> bool:
    ids = {id(p) for p in a.parameters()}
    return any(id(p) in ids for p in b.parameters())


def apply_fully_shard(model: nn.Module, plan: Plan, mesh: Any) -> int:
    """fully_shard every unit, then the root; returns the number of units (root included)."""
    from torch.distributed.fsdp import fully_shard

    kwargs = fsdp_kwargs(plan, mesh)
    units = shard_units(model, plan)
    for unit in units:
        fully_shard(unit, reshard_after_forward=plan.engine.fsdp.reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)
    return len(units) + 1


def fsdp2_engine(model: nn.Module, setup):
    """FSDP2 on ``device``: sharded model, torch optimizer on the sharded (DTensor) parameters, clip 1.0.

    Autocast only when MixedPrecisionPolicy casts nothing (param_dtype None): with a param_dtype the
    unsharded parameters are already in it, as in torchtitan."""
    import torch.distributed as dist

    from memplan.probe.distributed import ensure_distributed
    from memplan.probe.engines import Engine, autocast_for, make_optimizer
    from memplan.probe.fake_world import fake_world_size

    plan, device = setup.plan, setup.device
    ensure_distributed(device)  # the fake group when MEMPLAN_FAKE_WORLD is set
    world_size = dist.get_world_size()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = device_mesh(plan, device, world_size)
    units = apply_fully_shard(model, plan, mesh)
    model.notes.append(f"fsdp2: {units} fully_shard units over {world_size} ranks"
                       + (f" (fake world {world_size}: collectives are no-ops)" if fake_world_size() else ""))
    autocast = autocast_for(plan, device) if plan.engine.fsdp.param_dtype is None else contextlib.nullcontext
    if plan.mode == "inference":
        return Engine(model, model, None, lambda loss: None, lambda: None, autocast)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(plan, params)

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=plan.optimizer.foreach)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Engine(model, model, optimizer, lambda loss: loss.backward(), step, autocast)
