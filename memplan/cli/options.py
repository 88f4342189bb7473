"""Shared CLI plumbing: the options (each declared once), errors as one line with exit code 2.

Plans are built from the flag values by memplan.spec.flags.plan_from_flags."""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import typer.core

from memplan.spec.loading import InputError


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


def out_file(out: Path, *, force: bool, expected: str) -> Path:
    """An --out file a command may write: not a directory (``expected`` says what it should be), not an
    existing file unless --force; an unreadable path is named too. Raises InputError."""
    from memplan.spec.errors import printable

    name = printable(out)
    try:
        exists, is_dir = out.exists(), out.is_dir()
    except (OSError, ValueError) as error:
        raise InputError(f"--out={name}: not a usable path ({getattr(error, 'strerror', None) or error})") from None
    if is_dir:
        raise InputError(f"--out={name}: is a directory, expected {expected}")
    if exists and not force:
        raise InputError(f"--out={name}: exists; pass --force to overwrite")
    return out


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


# ---------------------------------------------------------------- options, each declared once
VRAM_HELP = ("VRAM per GPU in GiB as CUDA reports it (torch.cuda.get_device_properties().total_memory), not the "
             "marketing size: a 24 GB RTX 3090 is ~23.70 GiB, an RTX 4090 ~23.64, an A100 80GB ~79.14, an H100 80GB "
             "79.18. With --gpu NAME the card's CUDA total is used (profiles/gpus.yaml).")
GPU_HELP = ("Card from the catalogue (profiles/gpus.yaml: rtx-3090, rtx-4090, a100-80gb, h100-sxm, h200...): its "
            "CUDA-visible total and its family's context decide the verdict.")
MODEL = typer.Option(None, "--model", "-m",
                     help="Profile name (see `memplan profiles`) or path; default: the plan's model, else sa2va-4b.")
PLAN = typer.Option(None, "--plan", "-p", help="Plan YAML/JSON file (flags override it).")
GPU = typer.Option(None, "--gpu", help=GPU_HELP)
CALIBRATION = typer.Option(None, "--calibration", help="Calibration file (default profiles/calibration.yaml).")
SCRIPT = typer.Option("train.py", "--script", help="Training script named in the printed launch command.")
GPUS = typer.Option(None, "--gpus", help="GPUs per node (data parallel; num_gpus = nodes x gpus; the probe runs N > 1 "
                    "under torchrun).")
NODES = typer.Option(None, "--nodes", min=1, help="Nodes (hosts) of --gpus GPUs each; default 1 (probe --fake-world: the "
                     "HSDP mesh).")
FAKE_WORLD = typer.Option(None, "--fake-world", help="Run rank 0 of an N-rank FSDP2 job on one device (fake process "
                          "group, collectives are no-ops): the per-rank memory of N GPUs.", min=1, max=65536)
VRAM = typer.Option(None, "--vram", help=VRAM_HELP)
HOST_RAM = typer.Option(None, "--host-ram", help="Host RAM of the node in GiB.")
RES = typer.Option(None, "--res", help="SAM2 input resolution (pixels).")
ZERO = typer.Option(None, "--zero", help="DeepSpeed ZeRO stage 0-3.")
ENGINE = typer.Option(None, "--engine", help="deepspeed, pytorch or fsdp2.")
OFFLOAD = typer.Option(None, "--offload", help="none | optimizer | all (params too, ZeRO-3; FSDP2: CPUOffloadPolicy).")
LORA_RANK = typer.Option(None, "--lora-rank", help="LoRA rank of the LLM.")
TILES = typer.Option(None, "--tiles", help="448px tiles per image (InternVL: up to 12 + thumbnail).")
FRAMES = typer.Option(None, "--frames", help="Video frames (one tile each).")
TEXT_LEN = typer.Option(None, "--text-len", help="LLM sequence length in tokens (image tokens included).")
MICRO_BATCH = typer.Option(None, "--micro-batch", help="Samples per GPU per step.")
OBJECTS = typer.Option(None, "--objects", help="Masks per sample through the SAM2 decoder.")
CKPT = typer.Option(None, "--ckpt/--no-ckpt", help="Gradient checkpointing of the LLM.")
MODE = typer.Option(None, "--mode", help="train or inference.")
STACK = typer.Option(None, "--stack", help="Training stack: sa2va (the official recipe's wiring), hf-trainer, "
                     "accelerate or custom-loop; sets the stack's memory behaviours (docs/methodology.md).")
ATTENTION = typer.Option(None, "--attention", help="eager, sdpa or flash (eager keeps the s x s probabilities).")
ADAPTER_DTYPE = typer.Option(None, "--adapter-dtype", help="LoRA adapters in fp32 (peft's default) or compute "
                             "(bf16; autocast_adapter_dtype=False). Default: the stack's.")
ALLOCATOR = typer.Option(None, "--allocator", help="PyTorch's CUDA allocator as the run sets it: default, or "
                         "expandable_segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: the verdict counts "
                         "the pages it strands, not the default allocator's fragmentation margin).")
EMIT = typer.Option(None, "--emit-deepspeed",
                    help="Write the plan's (compare, search: the chosen plan's) DeepSpeed config (JSON) to FILE, "
                         "and the plan beside it.")
EMIT_FSDP = typer.Option(None, "--emit-fsdp",
                         help="Write this FSDP2 plan's accelerate config (YAML) to FILE, and the plan beside it.")
FORCE_EMIT = typer.Option(False, "--force", help="Overwrite files --emit-fsdp would write.")
WIDE = typer.Option(False, "--wide", help="Every column, whatever the terminal width.")
EXIT_CODE = typer.Option(False, "--exit-code", help="Exit 1 when the plan (compare, search: every plan) does not fit "
                         "(GPU or host RAM), for CI.")
CHOOSE = typer.Option(None, "--choose", help="Plan for --emit-deepspeed: a name or a 1-based row number.")
DATASET = typer.Option(None, "--dataset-samples", help="Samples in one epoch: adds time per epoch.", min=1)
def _finite_price(value: float | None) -> float | None:
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"--price={value}: must be a finite price per GPU-hour")
    return value


PRICE = typer.Option(None, "--price", help="Price per GPU-hour (with --dataset-samples: cost per epoch).", min=0,
                     callback=_finite_price)

# The plan flags (memplan.spec.flags.FLAGS): the type of each and its option
PLAN_FLAGS: dict[str, tuple[Any, Any]] = {
    "gpus": (Optional[int], GPUS), "nodes": (Optional[int], NODES), "vram": (Optional[float], VRAM), "gpu": (Optional[str], GPU),
    "host_ram": (Optional[float], HOST_RAM),
    "res": (Optional[int], RES), "zero": (Optional[int], ZERO), "engine": (Optional[str], ENGINE),
    "offload": (Optional[OffloadChoice], OFFLOAD), "lora_rank": (Optional[int], LORA_RANK),
    "tiles": (Optional[int], TILES), "frames": (Optional[int], FRAMES), "text_len": (Optional[int], TEXT_LEN),
    "micro_batch": (Optional[int], MICRO_BATCH), "objects": (Optional[int], OBJECTS), "ckpt": (Optional[bool], CKPT),
    "mode": (Optional[str], MODE), "stack": (Optional[str], STACK), "attention": (Optional[str], ATTENTION),
    "adapter_dtype": (Optional[str], ADAPTER_DTYPE), "allocator": (Optional[str], ALLOCATOR),
}


def option_group(table: dict[str, tuple[Any, Any]], names: tuple[str, ...], *, into: str,
                 after: str | None = None) -> Callable:
    """Decorator: the command gets the named options of ``table`` ({name: (type, typer option)})
    after its parameter ``after`` (else last), and receives their values as one dict, ``into``."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        hints = {k: v for k, v in typing.get_type_hints(fn).items() if k != into}
        own = [p for p in signature.parameters.values() if p.name != into]
        at = next((i + 1 for i, p in enumerate(own) if p.name == after), len(own))
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=table[name][1],
                                   annotation=table[name][0]) for name in names]

        @functools.wraps(fn)
        def command(**kwargs):
            group = {name: kwargs.pop(name) for name in names}
            return fn(**kwargs, **{into: group})

        command.__signature__ = signature.replace(parameters=[*own[:at], *added, *own[at:]])
        command.__annotations__ = {**hints, **{name: table[name][0] for name in names}}
        return command

    return decorate


def plan_flags(*names: str) -> Callable:
    """The named plan flags as options after --plan, handed to the command as ``flags`` (a dict for
    memplan.spec.flags.plan_from_flags)."""
    return option_group(PLAN_FLAGS, names, into="flags", after="plan")


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
