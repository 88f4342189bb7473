"""Engines: how the probe builds, wraps and steps a model, one entry of ``ENGINES`` per ``engine.kind``.

An ``EngineKind`` holds the three things that differ between engines:
- ``build_context(setup)``: where parameters are created (the CPU; DeepSpeed ZeRO-3 with zero3_init:
  inside ``deepspeed.zero.Init``, partitioned at construction);
- ``start(model, setup)``: wrap the planned model and make its optimizer, returning an ``Engine``
  (the module forward() calls, backward, step, autocast);
- ``process_group``: whether a process group is needed even on one rank (DeepSpeed asks for one).

Adding an engine (e.g. FSDP2) means one ``start`` function (and a ``build_context`` if parameters
must be created elsewhere, e.g. on meta) and one ``ENGINES`` entry; ``make_engine`` does the rest
(build, apply the plan, start). ``engine_kind(plan)`` is the one place that picks the entry, so a
training stack that wraps the model its own way (plan.stack.kind) is chosen there too. Inference
plans run as a plain module on the device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from memplan.probe.apply import apply_plan
from memplan.probe.build import DTYPES, Sa2VAProbeModel, build_model
from memplan.probe.distributed import ensure_distributed
from memplan.spec.hyperparameters import BETAS, EPSILON, GRADIENT_CLIPPING, LEARNING_RATE, WEIGHT_DECAY
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class EngineSetup:
    """What every engine is started from: the plan, this rank's device, the world, a user's DeepSpeed config."""

    profile: Profile
    plan: Plan
    device: torch.device
    world_size: int
    ds_config: dict[str, Any] | None = None


@dataclass
class Engine:
    """What a training step needs: the module to call, and backward/step functions."""

    model: Sa2VAProbeModel
    module: torch.nn.Module  # what forward() calls (DDP wrapper or DeepSpeed engine or the model)
    optimizer: Any
    backward: Callable[[torch.Tensor], None]
    step: Callable[[], None]
    autocast: Autocast = field(default=contextlib.nullcontext)


def autocast_for(plan: Plan, device: torch.device) -> Autocast:
    """torch.autocast in the compute dtype (bf16/fp16); none for fp32."""
    if plan.precision.compute == "fp32":
        return contextlib.nullcontext
    dtype = DTYPES[plan.precision.compute]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(plan: Plan, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """torch AdamW (foreach per plan) or SGD, or bitsandbytes AdamW8bit; memplan.spec.hyperparameters."""
    kind = plan.optimizer.kind
    if kind == "sgd":
        return torch.optim.SGD(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, foreach=plan.optimizer.foreach)
    if kind == "adam8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise RuntimeError("optimizer.kind=adam8bit needs bitsandbytes, which is not installed") from None
        return bitsandbytes.optim.AdamW8bit(params, lr=LEARNING_RATE, betas=BETAS, weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=LEARNING_RATE, betas=BETAS, eps=EPSILON, weight_decay=WEIGHT_DECAY,
                             foreach=plan.optimizer.foreach)


# --------------------------------------------------------------------------- plain PyTorch


@contextlib.contextmanager
def cpu_build(_setup: EngineSetup) -> Iterator[None]:
    """Parameters are created on the CPU (the engine moves them)."""
    with torch.device("cpu"):
        yield


def pytorch_engine(model: Sa2VAProbeModel, setup: EngineSetup) -> Engine:
    """Plain PyTorch: the model on the device, DDP across ranks, AdamW/SGD, clipping, GradScaler for fp16."""
    plan, device = setup.plan, setup.device
    model.to(device)
    module: torch.nn.Module = model
    if setup.world_size > 1:
        ensure_distributed(device)
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        module = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if plan.mode == "inference":
        return Engine(model, module, None, lambda loss: None, lambda: None, autocast_for(plan, device))
    optimizer = make_optimizer(plan, params)
    scaler = torch.amp.GradScaler(device.type) if plan.precision.compute == "fp16" else None

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler else loss).backward()

    def step() -> None:
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, GRADIENT_CLIPPING, foreach=plan.optimizer.foreach)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Engine(model, module, optimizer, backward, step, autocast_for(plan, device))


# --------------------------------------------------------------------------- DeepSpeed


def _deepspeed_config(setup: EngineSetup) -> dict[str, Any]:
    """The user's config (``memplan probe --deepspeed-config``) or the one memplan emits for the plan."""
    from memplan.integrations.deepspeed import deepspeed_config

    return setup.ds_config or deepspeed_config(setup.plan)


@contextlib.contextmanager
def deepspeed_build(setup: EngineSetup) -> Iterator[None]:
    """ZeRO-3 training with zero3_init: inside deepspeed.zero.Init (partitioned as built); else the CPU."""
    plan = setup.plan
    if plan.engine.zero_stage == 3 and plan.engine.zero3_init and plan.mode == "train":
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=_deepspeed_config(setup), dtype=DTYPES[plan.precision.compute]):
            yield
    else:
        with cpu_build(setup):
            yield


def deepspeed_engine(model: Sa2VAProbeModel, setup: EngineSetup) -> Engine:
    """deepspeed.initialize with the setup's config; adam8bit passes a bitsandbytes optimizer object.

    Inference runs as plain PyTorch (no optimizer, nothing to partition)."""
    if setup.plan.mode != "train":
        return pytorch_engine(model, setup)
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    client_optimizer = make_optimizer(setup.plan, params) if setup.plan.optimizer.kind == "adam8bit" else None
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, config=_deepspeed_config(setup), optimizer=client_optimizer
    )
    return Engine(model, engine, optimizer, engine.backward, engine.step)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class EngineKind:
    """How one ``engine.kind`` builds and starts (see the module docstring)."""

    start: Callable[[Sa2VAProbeModel, EngineSetup], Engine]
    build_context: Callable[[EngineSetup], contextlib.AbstractContextManager] = cpu_build
    process_group: bool = False


def _fsdp2_start(model: Sa2VAProbeModel, setup: EngineSetup) -> Engine:
    from memplan.probe.fsdp import fsdp2_engine  # FSDP2 (fully_shard per unit): memplan/probe/fsdp.py

    return fsdp2_engine(model, setup)


ENGINES: dict[str, EngineKind] = {
    "pytorch": EngineKind(start=pytorch_engine),
    "deepspeed": EngineKind(start=deepspeed_engine, build_context=deepspeed_build, process_group=True),
    "fsdp2": EngineKind(start=_fsdp2_start, process_group=True),
}


def engine_kind(plan: Plan) -> EngineKind:
    """The registered EngineKind of ``plan.engine.kind``."""
    try:
        return ENGINES[plan.engine.kind]
    except KeyError:
        raise RuntimeError(f"engine.kind={plan.engine.kind}: the probe has no engine for it "
                           f"(known: {', '.join(ENGINES)})") from None


def make_engine(setup: EngineSetup) -> Engine:
    """Build the model (in the engine's build context), apply the plan, start the engine."""
    kind = engine_kind(setup.plan)
    if kind.process_group:
        ensure_distributed(setup.device)
    with kind.build_context(setup):
        model = build_model(setup.profile, setup.plan)
    return kind.start(apply_plan(model, setup.plan), setup)
