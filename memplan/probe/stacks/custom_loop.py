"""``--stack custom-loop``: the hand-written loop of a user script, over transformers' own classes.

    model = get_peft_model(model, config)          # memplan.probe.stacks.models.adapt
    opt = torch.optim.AdamW(trainable, lr=...)      # foreach per plan.optimizer; fused per the stack
    for batch in batches:
        out = model(**batch)                        # forward: logits and loss in ``out``
        out.loss.backward()                         # backward: ``out`` (the logits) still alive
        opt.step(); opt.zero_grad()                 # optimizer_step
        # ``out`` lives on until the next iteration's forward has returned

No gradient clipping, no Trainer. The behaviours follow memplan.estimate.stack.resolve(plan), so the
probe runs what the estimate assumes: no autocast unless stack.autocast (bf16 weights run as they
are), outputs kept unless stack.keeps_outputs is false (then ``model(**batch).loss.backward()``),
foreach AdamW unless stack.fused_optimizer. Plain PyTorch on one GPU (DeepSpeed and several GPUs
are refused before anything is built).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from memplan.estimate.stack import resolve
from memplan.probe.build import DTYPES
from memplan.probe.stacks.models import adapt, build_hf_model, collate, make_sample
from memplan.probe.stacks.phases import PhaseClock
from memplan.spec.hyperparameters import BETAS, EPSILON, LEARNING_RATE, WEIGHT_DECAY
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Phase


def loop_autocast(plan: Plan, device: torch.device) -> Callable[[], Any]:
    """torch.autocast to the compute dtype when the stack autocasts (stack.autocast; custom-loop: no)."""
    compute = DTYPES[plan.precision.compute]
    if resolve(plan).autocast and compute != torch.float32:
        return lambda: torch.autocast(device_type=device.type, dtype=compute)
    return contextlib.nullcontext


def loop_optimizer(plan: Plan, params: list[torch.nn.Parameter],
                   make_optimizer: Callable[[Plan, list[torch.nn.Parameter]], Any]) -> Any:
    """torch AdamW, fused when stack.fused_optimizer says so (else foreach per plan.optimizer), or the
    harness's optimizer for the other kinds (SGD, AdamW8bit)."""
    if plan.optimizer.kind == "adamw" and resolve(plan).fused_optimizer:
        return torch.optim.AdamW(params, lr=LEARNING_RATE, betas=BETAS, eps=EPSILON, weight_decay=WEIGHT_DECAY,
                                 fused=True)
    return make_optimizer(plan, params)


def run_custom_loop(profile: Profile, plan: Plan, *, steps: int, device: torch.device, clock: PhaseClock,
                    categories: Callable[..., dict[str, int]],
                    make_optimizer: Callable[[Plan, list[torch.nn.Parameter]], Any]) -> dict[str, Any]:
    """Build, adapt, and run the loop for ``steps`` steps; the clock must have init open."""
    with torch.device(device):
        stack_model = build_hf_model(profile, plan)
    model = adapt(stack_model).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = loop_optimizer(plan, trainable, make_optimizer)
    batch = {key: value.to(device) for key, value in
             collate([make_sample(stack_model, seed=i) for i in range(plan.inputs.micro_batch)]).items()}
    autocast = loop_autocast(plan, device)
    keeps = resolve(plan).keeps_outputs
    clock.categories = lambda: categories(model, opt, device)
    clock.stop()  # init
    out = None
    for step in range(steps):
        clock.start(Phase.FORWARD, step)
        with autocast():
            if keeps:
                out = model(**batch)
                loss = out.loss
            else:
                loss = model(**batch).loss
        clock.switch(Phase.BACKWARD, step)
        loss.backward()
        del loss
        clock.switch(Phase.OPTIMIZER_STEP, step)
        opt.step()
        opt.zero_grad()
        clock.stop()
    del out
    return {"model": model, "notes": stack_model.notes, "optimizer": type(opt).__name__,
            "autocast": autocast is not contextlib.nullcontext, "keeps_outputs": keeps,
            "fused_optimizer": bool(getattr(opt, "defaults", {}).get("fused"))}
