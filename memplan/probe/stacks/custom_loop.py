"""``--stack custom-loop``: the hand-written loop of a user script, over transformers' own classes.

    model = get_peft_model(model, config)          # memplan.probe.stacks.models.adapt
    opt = torch.optim.AdamW(trainable, lr=...)      # memplan.probe.run.make_optimizer (plan.optimizer)
    for batch in batches:
        out = model(**batch)                        # forward: logits and loss in ``out``
        out.loss.backward()                         # backward: ``out`` (the logits) still alive
        opt.step(); opt.zero_grad()                 # optimizer_step
        # ``out`` lives on until the next iteration's forward has returned

No gradient clipping, no Trainer; ``torch.autocast`` to the compute dtype only around an fp32
model (bf16 weights run as they are, as such loops do). Plain PyTorch on one GPU (DeepSpeed and
several GPUs are refused before anything is built).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from memplan.probe.build import DTYPES
from memplan.probe.stacks.models import adapt, build_hf_model, collate, make_sample
from memplan.probe.stacks.phases import PhaseClock
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Phase


def loop_autocast(plan: Plan, weights: torch.dtype, device: torch.device) -> Callable[[], Any]:
    """torch.autocast to the compute dtype around an fp32 model; no autocast otherwise."""
    compute = DTYPES[plan.precision.compute]
    if weights == torch.float32 and compute != torch.float32:
        return lambda: torch.autocast(device_type=device.type, dtype=compute)
    return contextlib.nullcontext


def run_custom_loop(profile: Profile, plan: Plan, *, steps: int, device: torch.device, clock: PhaseClock,
                    categories: Callable[..., dict[str, int]],
                    make_optimizer: Callable[[Plan, list[torch.nn.Parameter]], Any]) -> dict[str, Any]:
    """Build, adapt, and run the loop for ``steps`` steps; the clock must have init open."""
    with torch.device(device):
        stack_model = build_hf_model(profile, plan)
    model = adapt(stack_model).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(plan, trainable)
    batch = {key: value.to(device) for key, value in
             collate([make_sample(stack_model, seed=i) for i in range(plan.inputs.micro_batch)]).items()}
    autocast = loop_autocast(plan, stack_model.weights_dtype, device)
    clock.categories = lambda: categories(model, opt, device)
    clock.stop()  # init
    out = None
    for step in range(steps):
        clock.start(Phase.FORWARD, step)
        with autocast():
            out = model(**batch)
        clock.switch(Phase.BACKWARD, step)
        out.loss.backward()
        clock.switch(Phase.OPTIMIZER_STEP, step)
        opt.step()
        opt.zero_grad()
        clock.stop()
    del out
    return {"model": model, "notes": stack_model.notes, "optimizer": type(opt).__name__,
            "autocast": autocast is not contextlib.nullcontext}
