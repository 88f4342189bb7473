"""Multi-GPU probes: relaunch under torchrun, one process per GPU, and always write exactly one record.

``launch_probe`` (the parent) writes a spec file, starts
``python -m torch.distributed.run --standalone --nproc_per_node=N -m memplan.probe.launch --worker SPEC``
in its own process group with NVLink multicast off (NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1), and waits at most ``timeout_s``.

Each worker measures its rank, saving its partial result to ``rank-<r>.json`` after every phase. When
all ranks succeed they all-gather their results (torch.distributed.all_gather_object) and rank 0 writes
``record.json``. A rank that fails (OOM, error) saves its result and exits at once with code 3, so the
others, blocked in a collective, are ended by torchrun instead of hanging. The parent then appends one
record: rank 0's, or one composed from the rank files (status oom/error/timeout; for a rank that died
without saying why: which rank and its exit code). A run past its timeout has its whole process group
killed and is recorded as 'timeout'.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from memplan.integrations.deepspeed import NCCL_ENV
from memplan.probe import faults, records
from memplan.probe.distributed import world
from memplan.probe.environment import before_run, environment, fallback_environment
from memplan.probe.faults import FAULT_ENV  # noqa: F401 (the hook's variable, for callers of the launcher)
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

FAILED_RANK_EXIT = 3
KILL_GRACE_S = 15
START_GRACE_S = 60  # the parent's hard limit is timeout_s + this (imports, rendezvous, CUDA start-up)
ROOT_CAUSE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*exitcode\s*:\s*(-?\d+)", re.S)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def worker_environment() -> dict[str, str]:
    """The parent's environment plus the NCCL settings (NCCL_ENV: NVLink multicast off) and DeepSpeed's
    op arch (TORCH_CUDA_ARCH_LIST 9.0, Hopper, unless set)."""
    env = dict(os.environ)
    env.update(NCCL_ENV)
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def torchrun_command(spec_path: Path, gpus: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "memplan.probe.launch", "--worker", str(spec_path)]


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the launcher's process group, then SIGKILL what is left after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _failure_line(log_text: str, returncode: int) -> str:
    """Which rank died and its exit code, from torchrun's root-cause report."""
    root = log_text.rfind("Root Cause")
    match = ROOT_CAUSE.search(log_text[root:] if root >= 0 else log_text)
    if match:
        return f"rank {match.group(1)} exited with code {match.group(2)} (torchrun exit {returncode})"
    return f"torchrun exited with code {returncode} and no rank reported a result"


def compose_record(work: Path, profile: Profile, plan: Plan, *, gpus: int, vram_cap_gib: float | None,
                   command: str, returncode: int | None, timed_out: bool, log_text: str) -> dict[str, Any]:
    """rank 0's record.json if the run completed, else a record from whatever the ranks saved."""
    from memplan.spec.units import gib_to_bytes

    finished = _read_json(work / "record.json")
    if finished is not None and not timed_out:
        return finished
    saved = [data for r in range(gpus) if (data := _read_json(work / f"rank-{r}.json")) is not None]
    ranks = [data["result"] for data in saved]
    env = saved[0]["environment"] if saved else fallback_environment(gpus)
    status, error, oom = records.combine_status(ranks)
    if timed_out:
        status, error, oom = "timeout", f"run passed its timeout; {len(ranks)} of {gpus} ranks reported", None
    elif status == "ok":
        status, error = "error", _failure_line(log_text, returncode if returncode is not None else -1)
    first = ranks[0] if ranks else {}
    return records.make_record(
        profile=profile.model_dump(mode="json"), plan=plan.model_dump(mode="json"), ranks=ranks, environment=env,
        command=command, vram_cap_bytes=gib_to_bytes(vram_cap_gib) if vram_cap_gib else None,
        status=status, error=error, oom=oom, notes=first.get("notes", ()), parameters=first.get("parameters"),
    )


def _wait(process: subprocess.Popen, limit_s: float | None, poll: Any) -> tuple[int | None, bool]:
    """(return code, timed out): wait up to ``limit_s``, calling ``poll()`` about once a second; past
    the limit the process group is killed."""
    import time

    deadline = None if limit_s is None else time.monotonic() + limit_s
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            return process.wait(timeout=1.0 if remaining is None else max(min(1.0, remaining), 0.01)), False
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                _kill_group(process)
                return process.returncode, True
            poll()


def launch_probe(profile: Profile, plan: Plan, *, gpus: int, out: str | Path, steps: int = 3,
                 vram_cap_gib: float | None = None, device: str = "cuda", timeout_s: float | None = None,
                 command: str | None = None, ds_config: dict[str, Any] | None = None,
                 vram_cap_card: str | None = None, on_progress: Any = None) -> dict[str, Any]:
    """Run the probe on ``gpus`` processes under torchrun; append and return exactly one record.

    ``ds_config`` (a user's DeepSpeed config) replaces deepspeed_config(plan) and is kept in the record;
    ``on_progress(rank-0 partial result or None)`` is called about once a second while the ranks run.
    """
    command = command if command is not None else " ".join(sys.argv)
    with tempfile.TemporaryDirectory(prefix="memplan-probe-") as tmp:
        work = Path(tmp)
        spec = {"profile": profile.model_dump(mode="json"), "plan": plan.model_dump(mode="json"), "steps": steps,
                "vram_cap_gib": vram_cap_gib, "device": device, "timeout_s": timeout_s, "command": command,
                "work": str(work), "ds_config": ds_config, "vram_cap_card": vram_cap_card}
        _write_json(work / "spec.json", spec)
        log_path = work / "torchrun.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(torchrun_command(work / "spec.json", gpus), env=worker_environment(),
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            returncode, timed_out = _wait(process, timeout_s + START_GRACE_S if timeout_s else None,
                                          lambda: on_progress(_read_json(work / "rank-0.json")) if on_progress else None)
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
        record = compose_record(work, profile, plan, gpus=gpus, vram_cap_gib=vram_cap_gib, command=command,
                                returncode=returncode, timed_out=timed_out, log_text=log_text)
        if record["status"] == "error":
            record["log_tail"] = log_text[-4000:]
        record = records.with_cap_card(record, vram_cap_card)
    if ds_config is not None:
        record["deepspeed_config"] = ds_config
    records.append_record(out, record)
    return record


# --------------------------------------------------------------------------- the worker side


def worker(spec_path: Path) -> int:
    """One rank: measure, save the rank file, gather, and (rank 0) write record.json."""
    rank, _, world_size = world()
    faults.at_start(rank)
    from memplan.probe import run as probe_run

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    work = Path(spec["work"])
    profile, plan = Profile.model_validate(spec["profile"]), Plan.model_validate(spec["plan"])
    env_holder: dict[str, Any] = {}
    before = before_run()  # dispatch cost and load, before the model and the engine exist (their hooks slow every call)

    def save(result: probe_run.RankResult) -> None:
        if "environment" not in env_holder:
            import torch

            device = torch.device(result.device) if result.device != "cuda" else torch.device("cpu")
            env_holder["environment"] = environment(device, world_size, before=before)
        _write_json(work / f"rank-{rank}.json", {"result": result.as_dict(), "environment": env_holder["environment"]})

    result = probe_run.measure_rank(profile, plan, steps=spec["steps"], vram_cap_gib=spec["vram_cap_gib"],
                                    device=spec["device"], timeout_s=spec["timeout_s"], on_update=save,
                                    ds_config=spec.get("ds_config"), vram_cap_card=spec.get("vram_cap_card"))
    if result.status != "ok" and world_size > 1:
        sys.stdout.flush()
        os._exit(FAILED_RANK_EXIT)  # peers may be blocked in a collective: let torchrun end them
    ranks = probe_run.gather_ranks(result, _device_of(result))
    if rank == 0:
        record = probe_run.assemble_record(profile, plan, ranks, env=env_holder["environment"],
                                           vram_cap_gib=spec["vram_cap_gib"], command=spec["command"])
        _write_json(work / "record.json", record)
    _shutdown()
    return 0


def _device_of(result: Any) -> Any:
    import torch

    return torch.device(result.device) if ":" in result.device or result.device == "cpu" else torch.device("cpu")


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m memplan.probe.launch --worker SPEC.json", file=sys.stderr)
        return 2
    return worker(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
