"""Shared CLI plumbing: flags layered over a plan file, errors as one line with exit code 2."""

from __future__ import annotations

import functools
import sys
from enum import Enum
from typing import Any, Callable

import typer
import typer.core

from memplan.spec.loading import DEEPSPEED_ONLY, InputError, load_profile, plan_document, plan_from_document, printable
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

DEFAULT_MODEL = "sa2va-4b"
DEFAULT_PLAN = "sa2va-official"  # plans/sa2va-official.yaml: the official recipe
VRAM_HELP = ("VRAM per GPU in GiB as CUDA reports it (torch.cuda.get_device_properties().total_memory), not the "
             "marketing size: a 24 GB RTX 3090 is ~23.70 GiB, an RTX 4090 ~23.64, an A100 80GB ~79.14, an H100 80GB "
             "79.18. With --gpu NAME the card's CUDA total is used (profiles/gpus.yaml).")
GPU_HELP = ("Card from the catalogue (profiles/gpus.yaml: rtx-3090, rtx-4090, a100-80gb, h100-sxm, h200...): its "
            "CUDA-visible total and its family's context decide the verdict.")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    md = "md"


class OffloadChoice(str, Enum):
    none = "none"
    optimizer = "optimizer"
    all = "all"
    nvme = "nvme"


def console():
    """A rich Console: the terminal's width; when stdout is not a terminal, $COLUMNS if set, else 140
    (tables adapt to the width: memplan.report.render, memplan.report.compare)."""
    import os

    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) >= 40 else 140)


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2 (bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def user_errors(fn: Callable) -> Callable:
    """Turn InputError (and a few OS errors) into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as error:
            fail(" ".join(str(error).splitlines()))  # one line, whatever a key or path held
        except BrokenPipeError:
            sys.exit(0)

    return wrapper


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def plan_with_defaults(document: dict[str, Any]) -> dict[str, Any]:
    """The recipe defaults, with each section of the document merged in. A component named in the
    document replaces the recipe's entry for it whole (so `llm: {train: frozen}` means frozen)."""
    base = Plan().model_dump(mode="python", exclude_none=True)
    for key, value in document.items():
        if key == "components" and isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        elif key == "engine" and isinstance(value, dict) and value.get("kind") == "fsdp2":
            base[key] = dict(value)  # DeepSpeed's defaults (zero_stage 2, ...) do not apply to FSDP2
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


STACK = typer.Option(None, "--stack", help="Training stack: sa2va (the official recipe's wiring), hf-trainer, "
                     "accelerate or custom-loop; sets the stack's memory behaviours (docs/methodology.md).")
ATTENTION = typer.Option(None, "--attention", help="eager, sdpa or flash (eager keeps the s x s probabilities).")
ADAPTER_DTYPE = typer.Option(None, "--adapter-dtype", help="LoRA adapters in fp32 (peft's default) or compute "
                             "(bf16; autocast_adapter_dtype=False). Default: the stack's.")


def build_plan(plan_file: str | None = None, **flags: Any) -> Plan:
    """A Plan from an optional plan file and CLI flags (None = not given). Flags win."""
    document = plan_with_defaults(plan_document(plan_file or DEFAULT_PLAN))
    engine_flag = flags.get("engine")
    engine_flag = engine_flag.value if isinstance(engine_flag, Enum) else engine_flag
    if engine_flag == "pytorch" and isinstance(document.get("engine"), dict):
        # --engine pytorch replaces the plan's engine: its DeepSpeed knobs no longer apply
        document["engine"] = {k: v for k, v in document["engine"].items() if k not in DEEPSPEED_ONLY}
        document["engine"].update(zero_stage=0, offload_optimizer="none", offload_params="none")
    if engine_flag == "fsdp2" and isinstance(document.get("engine"), dict):
        # --engine fsdp2 replaces the plan's engine: keep only its FSDP2 section, if any
        document["engine"] = {"fsdp": document["engine"]["fsdp"]} if "fsdp" in document["engine"] else {}
    overrides: dict[str, Any] = {}
    mapping = {
        "gpus": "hardware.num_gpus", "vram": "hardware.vram_gib", "host_ram": "hardware.host_ram_gib",
        "gpu": "hardware.gpu", "res": "inputs.sam2_resolution", "tiles": "inputs.tiles",
        "text_len": "inputs.text_tokens", "micro_batch": "inputs.micro_batch", "objects": "inputs.objects",
        "frames": "inputs.frames", "zero": "engine.zero_stage", "engine": "engine.kind",
        "ckpt": "components.llm.checkpointing", "mode": "mode", "attention": "attention",
        "precision": "precision.compute", "stack": "stack.kind", "adapter_dtype": "stack.adapter_dtype",
    }
    nodes = flags.get("nodes")
    if nodes is not None:
        _set(overrides, "hardware.nodes", nodes)
    if flags.get("gpus") is not None:  # --gpus is per node: num_gpus = nodes x gpus
        nodes = nodes if nodes is not None else document.get("hardware", {}).get("nodes", 1)
        flags = {**flags, "gpus": flags["gpus"] * nodes if isinstance(nodes, int) else flags["gpus"]}
    elif nodes is not None:
        per_node = document.get("hardware", {}).get("num_gpus", 1) // document.get("hardware", {}).get("nodes", 1)
        _set(overrides, "hardware.num_gpus", per_node * nodes)
    for flag, path in mapping.items():
        value = flags.get(flag)
        if value is not None:
            _set(overrides, path, value.value if isinstance(value, Enum) else value)
    if flags.get("zero") is not None and flags.get("engine") is None:
        _set(overrides, "engine.kind", "deepspeed")
    offload = flags.get("offload")
    offload = offload.value if isinstance(offload, Enum) else offload
    fsdp2 = (engine_flag or (document.get("engine") or {}).get("kind")) == "fsdp2"
    if offload is not None and fsdp2:
        if offload not in ("none", "all"):
            raise InputError(f"--offload={offload}: FSDP2's CPUOffloadPolicy moves parameters, gradients and the "
                             "optimizer step to the host together; allowed with --engine fsdp2: none, all")
        _set(overrides, "engine.fsdp.offload", offload == "all")
        offload = None
    if offload is not None:
        offload = offload.value if isinstance(offload, Enum) else offload
        device = "nvme" if offload == "nvme" else "cpu"
        _set(overrides, "engine.offload_optimizer", "none" if offload == "none" else device)
        _set(overrides, "engine.offload_params", device if offload in ("all", "nvme") else "none")
        if offload in ("all", "nvme") and flags.get("zero") is None:
            _set(overrides, "engine.zero_stage", 3)
    if flags.get("lora_rank") is not None:
        llm = document["components"]["llm"]
        if llm.get("train") != "lora":
            raise InputError(f"--lora-rank={flags['lora_rank']}: needs components.llm.train=lora, not {llm.get('train')}")
        _set(overrides, "components.llm.lora.rank", flags["lora_rank"])
    if flags.get("gpu") is not None and flags.get("vram") is None:  # --gpu alone: the whole card
        from memplan.spec.gpus import get_gpu

        card = get_gpu(flags["gpu"])
        _set(overrides, "hardware.gpu", card.name)
        _set(overrides, "hardware.vram_gib", card.vram_gib)
    merged = _deep_merge(document, overrides)
    plan = plan_from_document(merged, printable(plan_file or DEFAULT_PLAN))
    from memplan.spec.cards import check_vram

    check_vram(gpu=plan.hardware.gpu, vram_gib=plan.hardware.vram_gib)
    return plan


def resolve_profile(name: str | None, plan: Plan | None = None) -> Profile:
    """--model wins, then the plan's own model, then the documented default (sa2va-4b); a name, an
    alias (ByteDance/Sa2VA-4B), a profile YAML or a Hugging Face config.json (memplan.cli.names)."""
    from memplan.cli.names import load_model

    return load_model(name or (plan.model if plan else None) or DEFAULT_MODEL)


def check_lora_rank(profile: Profile, plan: Plan) -> None:
    """LoRA rank above a wrapped layer's narrowest width is rejected (the update could not be low-rank)."""
    for slot, spec in (("llm", profile.llm), ("vision", profile.vision)):
        part = getattr(plan.components, slot)
        if spec is None or part.train != "lora" or part.lora is None:
            continue
        if slot == "llm":
            narrowest = min(min(d_in, d_out) for _, d_in, d_out in spec.linear_shapes())
        else:  # the vision tower's qkv, proj, fc1, fc2
            narrowest = min(spec.hidden_size, spec.intermediate_size)
        if part.lora.rank > narrowest:
            raise InputError(
                f"components.{slot}.lora.rank={part.lora.rank}: above the narrowest wrapped layer width "
                f"({narrowest}) of {profile.name}; allowed: 1..{narrowest}"
            )


class OneLineErrors(typer.core.TyperGroup):
    """A TyperGroup whose usage errors (bad flag values, missing arguments, unknown commands) print
    `error: ...` on one line with exit code 2, like every other bad input (use: typer.Typer(cls=OneLineErrors))."""

    def invoke(self, ctx):
        # typer >= 0.19 vendors click as typer._click: take the classes from typer.BadParameter's module
        module = sys.modules[typer.BadParameter.__module__]
        usage_error = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")
        no_args = getattr(module, "NoArgsIsHelpError", ())
        try:
            return super().invoke(ctx)
        except usage_error as error:
            if no_args and isinstance(error, no_args):
                raise
            command = f"{error.ctx.command_path}: " if error.ctx is not None else ""
            message = " ".join(error.format_message().replace("Value error, ", "").split())
            typer.echo(f"error: {command}{message}", err=True)
            raise typer.Exit(code=2) from None
