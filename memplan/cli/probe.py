"""``memplan probe``: run a plan for real on this machine's GPU(s) and record the measured memory.

The plan comes from the shared plan flags (memplan.cli.options, built by memplan.spec.flags.plan_from_flags);
the probe adds --steps, --vram-cap, --out, --timeout, --device and --deepspeed-config. One GPU runs in
this process; --gpus N > 1 relaunches under torchrun
(memplan.probe.launch). Exit codes: 0 when a record was written with status ok or oom (an OOM is a
result), 1 for status error/timeout, 2 for bad input (one line, no traceback).
torch is imported only when the probe runs.
"""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Optional

import typer

from memplan.cli.options import FAKE_WORLD, MODEL, PLAN, console, plan_flags, user_errors
from memplan.probe.records import PHASE_FIELDS, STATUSES
from memplan.probe.stacks import check_stack
from memplan.cli.names import resolve_profile
from memplan.spec.flags import check_against_profile, plan_from_flags
from memplan.spec.loading import InputError
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Phase

DEFAULT_OUT = Path("reports/probes/probes.jsonl")
PROBE_INSTALL = "pip install 'memplan[probe]'"


def missing_probe_packages(plan: Plan) -> list[str]:
    """The packages a probe of ``plan`` imports that are not installed (torch, transformers, peft;
    deepspeed for a DeepSpeed engine), found without importing them."""
    needed = ["torch", "transformers", "peft"] + (["deepspeed"] if plan.engine.kind == "deepspeed" else [])
    return [name for name in needed if find_spec(name) is None]


def require_probe_packages(plan: Plan) -> None:
    """One line and exit 2 when the probe cannot run here: which packages are missing, how to install."""
    missing = missing_probe_packages(plan)
    if missing:
        raise InputError(f"memplan probe runs the plan with {', '.join(missing)}, not installed here: "
                         f"{PROBE_INSTALL} (on a CUDA machine keep its own torch build)")


class DeviceChoice(str, Enum):
    cuda = "cuda"
    cpu = "cpu"


def check_probe_inputs(profile: Profile, plan: Plan, *, steps: int, vram_cap_gib: float | None,
                       timeout_s: float | None) -> None:
    """Reject impossible probe options before anything heavy loads (InputError, one line)."""
    from memplan.probe.shapes import ProbeBuildError, input_shapes

    if steps < 1:
        raise InputError(f"--steps={steps}: must be at least 1")
    if vram_cap_gib is not None and vram_cap_gib <= 0:
        raise InputError(f"--vram-cap={vram_cap_gib}: must be a positive number of GiB")
    if timeout_s is not None and timeout_s <= 0:
        raise InputError(f"--timeout={timeout_s}: must be a positive number of seconds")
    try:
        input_shapes(profile, plan)
    except ProbeBuildError as error:
        raise InputError(str(error)) from None


def load_deepspeed_config(path: Path, plan: Plan) -> dict[str, Any]:
    """A DeepSpeed JSON config for --deepspeed-config, checked against the plan it is meant to run.

    The probe measures the plan, so the keys that change memory must agree with it: ZeRO stage,
    optimizer/parameter offload, micro-batch, gradient accumulation 1, bf16/fp16, bucket sizes.
    """
    from memplan.integrations.deepspeed import deepspeed_config
    from memplan.spec.loading import read_document

    data = read_document(path)
    if not isinstance(data, dict):
        raise InputError(f"--deepspeed-config={path}: must be a JSON object (a DeepSpeed config), not {type(data).__name__}")
    if plan.engine.kind != "deepspeed" or plan.mode != "train":
        raise InputError(f"--deepspeed-config={path}: the plan must train with engine.kind=deepspeed "
                         f"(it has engine.kind={plan.engine.kind}, mode={plan.mode})")
    expected = deepspeed_config(plan)
    for dotted in CONFIG_KEYS_THAT_MUST_AGREE:
        want, got = _dig(expected, dotted), _dig(data, dotted)
        if got is None and want is not None and dotted in DEEPSPEED_DEFAULTS:
            got = DEEPSPEED_DEFAULTS[dotted]
            if _off(got) != _off(want):
                raise InputError(f"--deepspeed-config={path}: {dotted} is missing (DeepSpeed then takes {got!r}) "
                                 f"but the plan gives {want!r}")
        if _off(got) != _off(want):
            shown = "missing" if got is None else f"{got!r}"
            raise InputError(f"--deepspeed-config={path}: {dotted} is {shown} but the plan gives {want!r} "
                             "(pass the plan the config was emitted for with --plan)")
    return data


CONFIG_KEYS_THAT_MUST_AGREE = (
    "zero_optimization.stage", "zero_optimization.offload_optimizer.device", "zero_optimization.offload_param.device",
    "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16.enabled", "fp16.enabled",
    "zero_optimization.reduce_bucket_size", "zero_optimization.allgather_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_max_live_parameters",
)
# What DeepSpeed 0.19 takes for a key the file leaves out (deepspeed/runtime/zero/config.py, runtime/config.py)
DEEPSPEED_DEFAULTS = {
    "gradient_accumulation_steps": 1, "zero_optimization.stage": 0,
    "zero_optimization.reduce_bucket_size": 500_000_000, "zero_optimization.allgather_bucket_size": 500_000_000,
    "zero_optimization.stage3_prefetch_bucket_size": 50_000_000,
    "zero_optimization.stage3_max_live_parameters": 1_000_000_000,
}


def _off(value: Any) -> Any:
    """Missing, false and offload device "none" all mean off."""
    return None if value is None or value is False or value == "none" else value


def _dig(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def check_gpus(plan: Plan, device: str) -> None:
    """hardware.num_gpus must not exceed the visible GPUs (the probe runs one rank per GPU here)."""
    if device != "cuda":
        return
    import torch

    visible = torch.cuda.device_count()
    if plan.hardware.num_gpus > visible:
        raise InputError(f"hardware.num_gpus={plan.hardware.num_gpus}: only {visible} CUDA device(s) visible here "
                         "(pass --gpus N, or --device cpu)")


def execute_probe(profile: Profile, plan: Plan, *, steps: int = 3, vram_cap_gib: float | None = None,
                  out: Path = DEFAULT_OUT, timeout_s: float | None = None, device: str = "cuda",
                  command: str | None = None, ds_config: dict[str, Any] | None = None,
                  fake_world: int | None = None, vram_cap_card: str | None = None,
                  trace_out: Path | None = None) -> dict[str, Any]:
    """Run the probe (in process for one GPU or a fake world, under torchrun for several) and append its record.
    ``vram_cap_card``: the catalogued card --vram-cap names (its family's context is emulated too);
    ``trace_out``: write the run's allocation trace there (one GPU: memplan.probe.trace)."""
    from memplan.probe.progress import ProbeProgress

    command = command if command is not None else shlex.join(["memplan", *sys.argv[1:]])
    gpus = plan.hardware.num_gpus
    if fake_world:
        from memplan.probe.fake_world import run_fake_world

        record = run_fake_world(profile, plan, world_size=fake_world, steps=steps, vram_cap_gib=vram_cap_gib,
                                device=device, timeout_s=timeout_s, command=command)
        from memplan.probe.records import append_record

        append_record(out, record)
        return record
    if gpus > 1:
        from memplan.probe.launch import launch_probe

        with ProbeProgress(steps=steps, gpus=gpus) as progress:
            return launch_probe(profile, plan, gpus=gpus, out=out, steps=steps, vram_cap_gib=vram_cap_gib,
                                device=device, timeout_s=timeout_s, command=command, ds_config=ds_config,
                                vram_cap_card=vram_cap_card, on_progress=progress.rank_result)
    from memplan.probe.distributed import release_distributed
    from memplan.probe.records import append_record
    from memplan.probe.run import run_probe

    if trace_out is not None:
        from memplan.probe import trace

        trace.start_recording()
    with ProbeProgress(steps=steps) as progress:
        record = run_probe(profile, plan, steps=steps, vram_cap_gib=vram_cap_gib, device=device, timeout_s=timeout_s,
                           command=command, ds_config=ds_config, vram_cap_card=vram_cap_card, on_phase=progress.phase)
    if trace_out is not None:
        record["trace"] = _write_trace(trace_out, record)
    if ds_config is not None:
        record["deepspeed_config"] = ds_config
    release_distributed()
    append_record(out, record)
    return record


def _write_trace(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The run's allocation trace to ``path`` (before the process group goes: NCCL's bytes are read)."""
    import torch

    from memplan.probe import trace

    device = torch.device(record["ranks"][0]["device"]) if record.get("ranks") else torch.device("cuda")
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    return trace.finish_recording(path, record=record, device=device, outside=trace.outside_bytes(device),
                                  process_group=grouped)


def check_trace_out(trace_out: Path | None, *, device: str, gpus: int, fake_world: int | None) -> None:
    """--trace-out: one real GPU, and a path that holds nothing yet (a trace is never overwritten)."""
    if trace_out is None:
        return
    if device != "cuda" or gpus > 1 or fake_world:
        raise InputError(f"--trace-out={trace_out}: traces one CUDA device (--device cuda, one GPU, no --fake-world)")
    if trace_out.exists():
        raise InputError(f"--trace-out={trace_out}: exists; traces are not overwritten, give a new path")
    if not trace_out.parent.is_dir():
        raise InputError(f"--trace-out={trace_out}: folder {trace_out.parent} does not exist")


def phase_table(record: dict[str, Any]):
    """A rich table: per phase, GiB allocated / reserved / device / host, max over ranks."""
    from rich.table import Table

    from memplan.spec.units import format_gib

    table = Table(title=f"memplan probe: {record['model']} ({record['status']})")
    for column in ("phase", "allocated GiB", "reserved GiB", "device GiB", "host GiB"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in [member.value for member in Phase]:
        readings = [rank["phases"][phase] for rank in record["ranks"] if phase in rank.get("phases", {})]
        if readings:
            table.add_row(phase, *(format_gib(max(r[field] for r in readings)) for field in PHASE_FIELDS))
    return table


def render_result(record: dict[str, Any], out: Path) -> None:
    """The phase table, the outcome line and where the record went."""
    out_console = console()
    out_console.print(phase_table(record))
    summary = record["summary"]
    from memplan.spec.units import format_gib

    line = f"peak allocated {format_gib(summary['peak_allocated_bytes'])} GiB in {summary['peak_phase']}"
    if record["status"] == "oom" and record.get("oom"):
        oom = record["oom"]
        requested = oom.get("requested_bytes")
        asked = f", tried to allocate {format_gib(requested)} GiB" if requested else ""
        line = f"OOM in {oom['phase']} on rank {oom['rank']}{asked}"
        layout = oom.get("layout")
        if layout:
            from memplan.probe.layout import fragmented

            line += (f"; {format_gib(layout['free_in_live_segments_bytes'])} GiB sat free in segments holding live "
                     f"blocks, the largest free block {format_gib(layout['largest_free_block_bytes'])} GiB "
                     f"({layout.get('when', 'after unwinding')})")
            if fragmented(layout, requested):
                line += ("; fragmentation, not capacity: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True lets freed "
                         "neighbours merge (docs/methodology.md, the tight band)")
    elif record["status"] in ("error", "timeout"):
        line = f"{record['status']}: {record.get('error')}"
    out_console.print(line, markup=False)
    out_console.print(f"record appended to {out} (run {record['run_id']})", markup=False)
    if record.get("trace"):
        written = record["trace"]
        out_console.print(f"trace written to {written['path']} ({written['requests']} requests); replay it on other "
                          f"cards: memplan replay {written['path']} --card rtx-3090", markup=False)


@user_errors
@plan_flags("gpus", "nodes", "res", "zero", "engine", "offload", "lora_rank", "tiles", "frames", "text_len",
            "micro_batch", "objects", "ckpt", "stack", "attention", "adapter_dtype", "mode", "allocator")
def probe_command(
    *,
    model: Optional[str] = MODEL,
    plan: Optional[str] = PLAN,
    fake_world: Optional[int] = FAKE_WORLD,
    steps: int = typer.Option(3, "--steps", help="Training steps to run and record (>= 1)."),
    vram_cap: Optional[str] = typer.Option(
        None, "--vram-cap", help="Emulate a smaller card: GiB as CUDA reports them (24), or a card name (rtx-3090: its "
        "CUDA-visible total, 23.70 GiB, less its family's context; profiles/gpus.yaml)."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="JSONL file the record is appended to."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds before the run is stopped."),
    device: DeviceChoice = typer.Option(DeviceChoice.cuda, "--device", help="cuda, or cpu (storage tracker)."),
    deepspeed_config: Optional[Path] = typer.Option(
        None, "--deepspeed-config", help="Train with this DeepSpeed JSON config (e.g. one memplan emitted) instead of "
        "the one memplan builds from the plan; it must agree with the plan."),
    trace_out: Optional[Path] = typer.Option(
        None, "--trace-out", help="Also write the run's allocation trace (gzip JSON) here, for `memplan replay`: "
        "one run on any card large enough answers for every smaller card."),
    flags: dict,
) -> None:
    """Train a plan for a few steps on random weights and record the memory measured per phase."""
    from memplan.spec.cards import parse_vram_cap

    cap = parse_vram_cap(vram_cap)
    vram_cap_gib = cap.gib if cap else None
    if fake_world is not None and flags["gpus"] is None:
        flags = {**flags, "gpus": max(fake_world // (flags["nodes"] or 1), 1)}
    from memplan.probe.environment import apply_allocator

    the_plan = apply_allocator(plan_from_flags(plan, **flags))
    require_probe_packages(the_plan)
    profile = resolve_profile(model, the_plan)
    check_against_profile(profile, the_plan)
    check_probe_inputs(profile, the_plan, steps=steps, vram_cap_gib=vram_cap_gib, timeout_s=timeout)
    check_stack(profile, the_plan)
    if fake_world is not None:
        from memplan.probe.fake_world import check_fake_world

        check_fake_world(the_plan, fake_world, deepspeed_config=deepspeed_config)
    else:
        check_gpus(the_plan, device.value)
    check_trace_out(trace_out, device=device.value, gpus=the_plan.hardware.num_gpus, fake_world=fake_world)
    ds_config = load_deepspeed_config(deepspeed_config, the_plan) if deepspeed_config is not None else None
    record = execute_probe(profile, the_plan, steps=steps, vram_cap_gib=vram_cap_gib, out=out, timeout_s=timeout,
                           device=device.value, ds_config=ds_config, fake_world=fake_world,
                           vram_cap_card=cap.card if cap else None, trace_out=trace_out)
    if record["status"] not in STATUSES:
        raise InputError(f"status={record['status']!r}: the probe record's status must be one of {', '.join(STATUSES)}")
    render_result(record, out)
    if record["status"] in ("error", "timeout"):
        raise typer.Exit(code=1)

