"""``--stack accelerate``: the training loop as accelerate's docs write it, over transformers' own classes.

    accelerator = Accelerator(mixed_precision="bf16", gradient_accumulation_steps=1)
    model = get_peft_model(model, config)                    # memplan.probe.stacks.models.adapt
    optimizer = torch.optim.AdamW(model.parameters(), ...)   # foreach unless stack.fused_optimizer
    model, optimizer = accelerator.prepare(model, optimizer)
    for batch in batches:
        outputs = model(**batch)                             # forward
        loss = outputs.loss
        accelerator.backward(loss)                           # backward: ``outputs`` still alive
        optimizer.step(); optimizer.zero_grad()              # optimizer_step

``mixed_precision`` follows plan.precision.compute (bf16, fp16; ``no`` for fp32 or stack.autocast
false). What accelerate's ``prepare`` does to memory on one GPU (accelerate/accelerator.py,
``prepare_model``): it moves the model to the device and casts nothing; with mixed precision it
replaces ``model.forward`` by ``convert_outputs_to_fp32(autocast(forward))``, so the forward runs
under torch.autocast and every bf16/fp16 tensor of the output is converted to fp32
(accelerate/utils/operations.py, ``convert_to_fp32``): the kept logits are fp32, 4 bytes x tokens x
vocabulary, not the bf16 2 (memplan.estimate.stack.Behaviour.outputs_fp32). ``stack.keeps_outputs``
false is ``del outputs`` before ``accelerator.backward(loss)``.

One GPU, plain PyTorch (several GPUs and DeepSpeed are refused before anything is built); the
Accelerator is made with launcher variables (LOCAL_RANK, WORLD_SIZE, ...) hidden, as a one-process
script has none, and the AcceleratorState singleton is reset before and after the run, so a later
Trainer or accelerate run in the same process starts clean.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import torch

from memplan.estimate.stack import resolve
from memplan.probe.stacks.custom_loop import loop_optimizer
from memplan.probe.stacks.models import adapt, build_hf_model, collate, make_sample
from memplan.probe.stacks.phases import PhaseClock
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Phase


def mixed_precision(plan: Plan) -> str:
    """Accelerator(mixed_precision=...): the compute dtype when the stack autocasts, else ``no``."""
    compute = plan.precision.compute
    if compute == "fp32" or not resolve(plan).autocast:
        return "no"
    return compute


# what accelerate's PartialState reads to decide on a distributed run (accelerate/state.py, _prepare_backend)
LAUNCHER_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                "MV2_COMM_WORLD_SIZE")


@contextlib.contextmanager
def single_process_env() -> Iterator[None]:
    """Hide launcher variables while the Accelerator is made, as ``python train.py`` (or ``accelerate
    launch`` with one process) on one GPU runs it: with LOCAL_RANK set, accelerate would start a
    process group (NCCL on a GPU) and, on the CPU with WORLD_SIZE > 1, wrap the model in DDP."""
    saved = {name: os.environ.pop(name) for name in LAUNCHER_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _reset_accelerate_state() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_accelerate_loop(profile: Profile, plan: Plan, *, steps: int, device: torch.device, clock: PhaseClock,
                        categories: Callable[..., dict[str, int]],
                        make_optimizer: Callable[[Plan, list[torch.nn.Parameter]], Any]) -> dict[str, Any]:
    """Build, adapt, prepare and run the loop for ``steps`` steps; the clock must have init open."""
    from accelerate import Accelerator

    _reset_accelerate_state()
    try:
        with single_process_env():
            accelerator = Accelerator(mixed_precision=mixed_precision(plan), gradient_accumulation_steps=1,
                                      cpu=device.type == "cpu")
        if accelerator.num_processes != 1:
            raise RuntimeError(f"accelerate sees {accelerator.num_processes} processes "
                               f"({accelerator.distributed_type}); stack.kind=accelerate probes one GPU")
        with torch.device(device):
            stack_model = build_hf_model(profile, plan)
        model = adapt(stack_model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = loop_optimizer(plan, trainable, make_optimizer)
        model, optimizer = accelerator.prepare(model, optimizer)
        inner = getattr(optimizer, "optimizer", optimizer)
        batch = {key: value.to(accelerator.device) for key, value in
                 collate([make_sample(stack_model, seed=i) for i in range(plan.inputs.micro_batch)]).items()}
        keeps = resolve(plan).keeps_outputs
        clock.categories = lambda: categories(model, inner, device)
        clock.stop()  # init
        outputs = None
        logits_dtype = None
        for step in range(steps):
            clock.start(Phase.FORWARD, step)
            outputs = model(**batch)
            loss = outputs.loss
            logits_dtype = str(outputs.logits.dtype).split(".")[-1]
            if not keeps:
                del outputs
                outputs = None
            clock.switch(Phase.BACKWARD, step)
            accelerator.backward(loss)
            del loss
            clock.switch(Phase.OPTIMIZER_STEP, step)
            optimizer.step()
            optimizer.zero_grad()
            clock.stop()
        del outputs
        info = {"model": model, "notes": stack_model.notes, "optimizer": type(inner).__name__,
                "autocast": bool(accelerator.native_amp), "keeps_outputs": keeps,
                "fused_optimizer": bool(getattr(inner, "defaults", {}).get("fused")),
                "accelerate": {"mixed_precision": str(accelerator.mixed_precision),
                               "native_amp": bool(accelerator.native_amp),
                               "distributed_type": str(getattr(accelerator.distributed_type, "value",
                                                               accelerator.distributed_type)),
                               "outputs_logits_dtype": logits_dtype,
                               "gradient_accumulation_steps": int(accelerator.gradient_accumulation_steps)}}
        stack_model.notes.append(f"accelerate Accelerator(mixed_precision={accelerator.mixed_precision!r}); "
                                 f"outputs' logits {logits_dtype}")
        return info
    finally:
        _reset_accelerate_state()
