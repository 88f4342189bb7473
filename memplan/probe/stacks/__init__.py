"""Probes through the training stacks users run, beside memplan's own harness (stack sa2va).

``plan.stack.kind`` picks the stack (memplan.probe.run.measure_rank dispatches here for any kind but
sa2va): ``hf-trainer`` (memplan.probe.stacks.hf_trainer: the real transformers.Trainer, peft as
users call it, DeepSpeed through Trainer's integration), ``accelerate``
(memplan.probe.stacks.accelerate_loop: accelerate's documented loop, Accelerator.prepare and
accelerator.backward) or ``custom-loop`` (memplan.probe.stacks.custom_loop: a hand-written loop
that keeps its outputs), all over
transformers' own model classes (memplan.probe.stacks.models). The record is the harness's
``memplan.probe/1`` record; each rank adds ``stack``: what the stack really did (Trainer's state,
the optimizer class, which modules carry input-gradient hooks, the trainable dtypes).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections import Counter
from typing import Any, Callable

from memplan.spec.loading import InputError
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

PROBED_STACKS = ("sa2va", "hf-trainer", "accelerate", "custom-loop")
LOOP_STACKS = ("accelerate", "custom-loop")  # one GPU, plain PyTorch


def check_stack(profile: Profile, plan: Plan) -> None:
    """InputError (one line) for a stack/plan/model the stack probes cannot run; no torch import."""
    kind = plan.stack.kind
    if kind == "sa2va":
        return
    if kind not in PROBED_STACKS:
        raise InputError(f"stack.kind={kind}: memplan probe runs {', '.join(PROBED_STACKS)} (not {kind} yet)")
    check_stack_profile(profile, plan)
    if plan.mode != "train":
        raise InputError(f"mode={plan.mode}: stack.kind={kind} probes training only (use stack.kind=sa2va)")
    if kind in LOOP_STACKS and plan.engine.kind != "pytorch":
        raise InputError(f"engine.kind={plan.engine.kind}: stack.kind={kind} is a plain PyTorch loop "
                         "(use engine.kind=pytorch, or stack.kind=hf-trainer for DeepSpeed)")
    if kind in LOOP_STACKS and plan.hardware.num_gpus > 1:
        raise InputError(f"hardware.num_gpus={plan.hardware.num_gpus}: stack.kind={kind} probes one GPU")
    if plan.stack.loss == "chunked":
        raise InputError("stack.loss=chunked: the probe has no fused cross-entropy (it trains HF's ForCausalLMLoss)")
    if kind == "hf-trainer" and plan.stack.keeps_outputs:
        raise InputError("stack.keeps_outputs=true: Trainer's compute_loss drops the outputs "
                         "(use stack.kind=custom-loop)")
    if plan.components.vision.train == "lora":
        raise InputError(f"components.vision.train=lora: stack.kind={kind} trains the vision tower frozen or full")
    if plan.attention == "flash" and importlib.util.find_spec("flash_attn") is None:
        raise InputError("attention=flash: flash_attn is not installed here (use sdpa or eager)")
    if plan.optimizer.kind == "adam8bit" and kind == "hf-trainer":
        raise InputError("optimizer.kind=adam8bit: stack.kind=hf-trainer uses Trainer's default optimizer "
                         "(adamw, or DeepSpeed's fused_adam/cpu_adam)")


def check_stack_profile(profile: Profile, plan: Plan) -> str:
    """'causal_lm' or 'internvl' for ``profile``; InputError for a profile these stacks cannot build."""
    stack = plan.stack.kind
    if profile.sam2 is not None or profile.seg_head is not None:
        raise InputError(f"stack.kind={stack}: model {profile.name} has SAM2/a seg head, whose wiring is memplan's "
                         "own (use stack.kind=sa2va, or an InternVL or text-only profile)")
    if profile.llm is None:
        raise InputError(f"stack.kind={stack}: model {profile.name} has no LLM (these stacks train a causal LM)")
    if profile.vision is None:
        return "causal_lm"
    if profile.vision.architecture != "internvit" or profile.projector is None:
        raise InputError(f"stack.kind={stack}: model {profile.name} has a {profile.vision.architecture} vision tower; "
                         "only InternVL (internvit + projector) is built as transformers' own class")
    if plan.inputs.frames:
        raise InputError(f"inputs.frames={plan.inputs.frames}: stack.kind={stack} feeds tiles only (use inputs.tiles)")
    return "internvl"


def measure_stack_rank(profile: Profile, plan: Plan, *, steps: int = 3, vram_cap_gib: float | None = None,
                       device: str = "cuda", timeout_s: float | None = None,
                       on_update: Callable[[Any], None] | None = None,
                       ds_config: dict[str, Any] | None = None, vram_cap_card: str | None = None) -> Any:
    """measure_rank for the user stacks: the same RankResult, meter, VRAM cap (``vram_cap_card``: a
    catalogued card's context), start context, timeout and failure filing."""
    from memplan.probe import run as harness
    from memplan.probe.distributed import world
    from memplan.probe.meter import Meter
    from memplan.probe.stacks.phases import PhaseClock, StackRankResult
    from memplan.spec.vocabulary import Phase

    check_stack(profile, plan)
    rank, local_rank, _ = world()
    result = StackRankResult(rank=rank, device=device)
    opened = harness.open_device(result, device, local_rank, vram_cap_gib=vram_cap_gib, vram_cap_card=vram_cap_card)
    if opened is None:
        return result
    torch_device, tracker, device_cap = opened
    clock = PhaseClock(Meter(torch_device, tracker), result, device_cap, on_update)
    try:
        with tracker if tracker is not None else contextlib.nullcontext(), harness._alarm(timeout_s):
            clock.start(Phase.INIT)
            info = _run_stack(profile, plan, steps=steps, device=torch_device, clock=clock, ds_config=ds_config)
        _describe(result, info, clock, steps=steps, plan=plan)
    except Exception as error:  # noqa: BLE001 - every failure is a result, filed in its phase
        phase = clock.abort() or "setup"
        harness._file_failure(result, harness.PhaseFailure(phase, error))
    finally:
        harness.close_device(result, torch_device, device_cap)
    if on_update is not None:
        on_update(result)
    return result


def _run_stack(profile: Profile, plan: Plan, *, steps: int, device: Any, clock: Any,
               ds_config: dict[str, Any] | None) -> dict[str, Any]:
    from memplan.probe.census import category_bytes

    if plan.stack.kind == "hf-trainer":
        from memplan.probe.stacks.hf_trainer import run_trainer

        if plan.engine.kind == "deepspeed":
            from memplan.probe.distributed import ensure_distributed

            ensure_distributed(device)  # what torchrun --nproc_per_node=1 provides
        return run_trainer(profile, plan, steps=steps, device=device, clock=clock,
                           categories=category_bytes, ds_config=ds_config)
    from memplan.probe.engines import make_optimizer

    if plan.stack.kind == "accelerate":
        from memplan.probe.stacks.accelerate_loop import run_accelerate_loop

        return run_accelerate_loop(profile, plan, steps=steps, device=device, clock=clock,
                                   categories=category_bytes, make_optimizer=make_optimizer)
    from memplan.probe.stacks.custom_loop import run_custom_loop

    return run_custom_loop(profile, plan, steps=steps, device=device, clock=clock,
                           categories=category_bytes, make_optimizer=make_optimizer)


def _describe(result: Any, info: dict[str, Any], clock: Any, *, steps: int, plan: Plan) -> None:
    """Notes, parameter counts, step times and the ``stack`` block of what really ran."""
    from memplan.probe.stacks.models import input_grad_hooks, parameter_counts
    from memplan.probe.stacks.phases import phase_seconds, step_seconds

    model = info["model"]
    result.notes = list(info["notes"])
    result.parameters = {"trainable": parameter_counts(model, trainable=True),
                         "frozen": parameter_counts(model, trainable=False)}
    result.step_times_s = step_seconds(clock, steps)
    result.phase_times_s = phase_seconds(clock, steps)
    dtypes = Counter()
    for param in model.parameters():
        if param.requires_grad:
            dtypes[str(param.dtype).split(".")[-1]] += int(getattr(param, "ds_numel", param.numel()))
    result.stack = {
        "kind": plan.stack.kind,
        "model_class": type(getattr(model, "base_model", model).model if hasattr(model, "peft_config")
                            else model).__name__,
        "peft": hasattr(model, "peft_config"),
        "optimizer": info.get("optimizer"),
        "trainable_dtypes": dict(dtypes),
        "input_grad_hooks": input_grad_hooks(model),
        **{key: info[key] for key in ("trainer_state", "autocast", "keeps_outputs", "fused_optimizer",
                                      "deepspeed_config", "accelerate") if info.get(key) is not None},
    }
