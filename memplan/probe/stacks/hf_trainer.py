"""``--stack hf-trainer``: train with the real transformers.Trainer and read the peaks from inside it.

What runs is what a user script runs: ``TrainingArguments`` (created first, so a ZeRO-3 config
builds the model under zero.Init, as transformers/integrations/deepspeed.py's HfDeepSpeedConfig
arranges) with bf16/fp16 per plan.precision, ``gradient_checkpointing`` per the LLM's plan
(``use_reentrant=False``), Trainer's default optimizer (``optim`` left at its default,
adamw_torch_fused on torch >= 2.8; adamw_torch when stack.fused_optimizer is false), ``max_grad_norm`` 1.0, and, where the plan's engine is DeepSpeed,
``deepspeed=`` the config dict from memplan.integrations.deepspeed.deepspeed_config without its
optimizer block, so Trainer builds its torch optimizer and DeepSpeed wraps it
(deepspeed_optim_sched in transformers/integrations/deepspeed.py); with optimizer offload that
needs ``zero_force_ds_cpu_optimizer: false``. Plans asking for DeepSpeed's own optimizers
(fused_adam, cpu_adam) keep the block (Trainer then passes a DummyOptim).

Phases (which are real): ``init`` from the model build to ``on_train_begin`` (model, peft,
Trainer, DeepSpeed engine); ``forward`` from ``on_step_begin`` to a forward hook on the trained
module (the loss is computed inside the model; Trainer's compute_loss keeps only the loss);
``backward`` from there to ``on_pre_optimizer_step`` (includes Trainer's gradient clipping);
``optimizer_step`` from ``on_pre_optimizer_step`` to ``on_optimizer_step``. Under DeepSpeed,
accelerate's DeepSpeedEngineWrapper.backward runs ``engine.backward`` then ``engine.step``
(clipping, the step, zero_grad), so ``engine.step`` is wrapped (an instance attribute that reads
the meter around the original) and that is the optimizer_step phase.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from typing import Any, Callable

import torch

from memplan.estimate.stack import resolve
from memplan.integrations.deepspeed import deepspeed_config
from memplan.spec.hyperparameters import BETAS, EPSILON, GRADIENT_CLIPPING, LEARNING_RATE, WEIGHT_DECAY
from memplan.probe.stacks.models import CHECKPOINT_KWARGS, adapt, build_hf_model, collate, make_sample
from memplan.probe.stacks.phases import PhaseClock
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Phase


def trainer_deepspeed_config(plan: Plan, config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The DeepSpeed dict handed to TrainingArguments (None without DeepSpeed): memplan's emitted
    config (or the user's ``config``) without an optimizer block unless the plan names DeepSpeed's."""
    if plan.engine.kind != "deepspeed":
        return None
    config = dict(config or deepspeed_config(plan))
    if plan.optimizer.kind not in ("fused_adam", "cpu_adam"):
        config.pop("optimizer", None)
        if plan.engine.offload_optimizer != "none":
            config["zero_force_ds_cpu_optimizer"] = False
    return config


def trainer_optim(plan: Plan) -> str:
    """TrainingArguments.optim: adamw_torch_fused (Trainer's default on torch >= 2.8) unless
    stack.fused_optimizer is false (adamw_torch, foreach); sgd for optimizer.kind sgd."""
    if plan.optimizer.kind == "sgd":
        return "sgd"
    return "adamw_torch_fused" if resolve(plan).fused_optimizer else "adamw_torch"


def training_arguments(plan: Plan, *, steps: int, device: torch.device, output_dir: str,
                       ds_config: dict[str, Any] | None) -> Any:
    """TrainingArguments for ``steps`` optimizer steps of one micro-batch each, nothing logged or saved."""
    from transformers import TrainingArguments

    compute = plan.precision.compute
    behaviour = resolve(plan)
    autocast = behaviour.autocast or ds_config is not None  # DeepSpeed's bf16 section must match args.bf16
    checkpointing = plan.components.llm.checkpointing
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=plan.inputs.micro_batch,
        gradient_accumulation_steps=1, learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPSILON, max_grad_norm=GRADIENT_CLIPPING,
        bf16=compute == "bf16" and autocast, fp16=compute == "fp16" and autocast,
        optim=trainer_optim(plan), gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS) if checkpointing else None,
        save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=device.type == "cuda", remove_unused_columns=False,
        use_cpu=device.type == "cpu", deepspeed=ds_config, seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return TrainingArguments(**kwargs)


def phase_callback(clock: PhaseClock, box: dict[str, Any]) -> Any:
    """A TrainerCallback that closes init at on_train_begin and opens/closes the step phases."""
    from transformers import TrainerCallback

    class MemplanPhases(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.stop()  # init
            trainer = box["trainer"]
            engine = getattr(trainer, "deepspeed", None) or (
                trainer.model_wrapped if hasattr(trainer.model_wrapped, "backward") else None)
            if engine is not None and hasattr(engine, "step"):
                wrap_engine_step(engine, clock)
                box["engine"] = engine

        def on_step_begin(self, args, state, control, **kwargs):
            clock.start(Phase.FORWARD, state.global_step)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if clock.current and clock.current[0] is Phase.BACKWARD:
                clock.switch(Phase.OPTIMIZER_STEP, clock.current[1])

        def on_optimizer_step(self, args, state, control, **kwargs):
            if clock.current and clock.current[0] is Phase.OPTIMIZER_STEP:
                clock.stop()

        def on_step_end(self, args, state, control, **kwargs):
            clock.stop()  # nothing open unless a phase was missed

    return MemplanPhases()


def hooks_callback(which: str, notes: list[str]) -> Any:
    """A TrainerCallback that sets the input-grad hooks (stack.input_grad_hooks) at on_train_begin.

    Setting them on the model before Trainer is not enough: Trainer.train turns checkpointing on
    (activation_checkpointing_enable / gradient_checkpointing_enable, transformers trainer.py) before
    on_train_begin, and that calls PreTrainedModel.enable_input_require_grads again (modeling_utils.py),
    which hooks every tower's embeddings anew (seen on the H200: stacks-c/vl1b-hooks-llm-13tiles kept
    the vision tower's hook and measured the all-towers peak).
    """
    from transformers import TrainerCallback

    from memplan.probe.stacks.models import set_input_grad_hooks

    class InputGradHooks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            set_input_grad_hooks(kwargs["model"], which)
            notes.append(f"input-grad hooks set to {which} at on_train_begin (after Trainer's checkpointing enable)")

    return InputGradHooks()


def wrap_engine_step(engine: Any, clock: PhaseClock) -> None:
    """Make DeepSpeedEngine.step (called inside accelerate's backward) the optimizer_step phase."""
    original = engine.step

    def step(*args: Any, **kwargs: Any) -> Any:
        if clock.current and clock.current[0] is Phase.BACKWARD:
            clock.switch(Phase.OPTIMIZER_STEP, clock.current[1])
        value = original(*args, **kwargs)
        if clock.current and clock.current[0] is Phase.OPTIMIZER_STEP:
            clock.stop()
        return value

    engine.step = step


def forward_hook(clock: PhaseClock):
    """End of the trained module's forward (outputs and loss computed): forward -> backward."""
    def hook(_module: Any, _inputs: Any, _output: Any) -> None:
        if clock.current and clock.current[0] is Phase.FORWARD and torch.is_grad_enabled():
            clock.switch(Phase.BACKWARD, clock.current[1])

    return hook


def run_trainer(profile: Profile, plan: Plan, *, steps: int, device: torch.device, clock: PhaseClock,
                categories: Callable[..., dict[str, int]], ds_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build, adapt and train ``steps`` steps with Trainer; returns what the record needs to say.

    The clock must have the init phase open; ``categories(model, optimizer, device)`` counts the live
    tensors per category; failures propagate (the caller files them).
    """
    from transformers import Trainer

    config = trainer_deepspeed_config(plan, ds_config)
    with tempfile.TemporaryDirectory(prefix="memplan-trainer-") as output_dir:
        args = training_arguments(plan, steps=steps, device=device, output_dir=output_dir, ds_config=config)
        zero3 = config is not None and config.get("zero_optimization", {}).get("stage") == 3
        with contextlib.nullcontext() if zero3 else torch.device(device):  # ZeRO-3: HF's zero.Init
            stack_model = build_hf_model(profile, plan)
        model = adapt(stack_model)
        sample_count = steps * plan.inputs.micro_batch
        dataset = [make_sample(stack_model, seed=i % plan.inputs.micro_batch) for i in range(sample_count)]
        box: dict[str, Any] = {}
        callbacks = [phase_callback(clock, box)]
        if plan.stack.input_grad_hooks is not None:
            callbacks.insert(0, hooks_callback(plan.stack.input_grad_hooks, stack_model.notes))
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                          callbacks=callbacks)
        box["trainer"] = trainer
        model.register_forward_hook(forward_hook(clock))
        clock.categories = lambda: categories(trainer.model, _optimizer_of(trainer, box), device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            trainer.train()
        return {"model": trainer.model, "notes": stack_model.notes, "trainer_state": _state(trainer),
                "optimizer": type(_inner(trainer.optimizer)).__name__, "deepspeed_config": config}


def _optimizer_of(trainer: Any, box: dict[str, Any]) -> Any:
    """The ZeRO optimizer under DeepSpeed (its partitions are the categories), else Trainer's."""
    engine = box.get("engine")
    return getattr(engine, "optimizer", None) if engine is not None else trainer.optimizer


def _inner(optimizer: Any) -> Any:
    for _ in range(3):
        if not hasattr(optimizer, "optimizer"):
            break
        optimizer = optimizer.optimizer
    return optimizer


def _state(trainer: Any) -> dict[str, Any]:
    """What Trainer's own state says it did."""
    state = trainer.state
    return {"global_step": int(state.global_step), "max_steps": int(state.max_steps),
            "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)), "bf16": bool(trainer.args.bf16),
            "gradient_checkpointing": bool(trainer.args.gradient_checkpointing)}
