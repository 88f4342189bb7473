"""Probe records: one JSON object per line (JSONL), schema ``memplan.probe/1``. No torch here.

A record (all byte counts are ``int``)::

    schema, run_id, created (ISO 8601, UTC), command (argv string), model (profile name),
    profile (Profile.model_dump(mode="json")), plan (Plan.model_dump(mode="json")),
    status: ok | oom | error | timeout, error: str | None,
    oom: {phase, rank, requested_bytes, step (1-based), allocated_bytes, reserved_unallocated_bytes
          (the fragmentation at the failing request, from PyTorch's message), layout (the allocator's segments
          at the request, on CUDA: memplan.probe.layout)} | None, vram_cap_bytes: int | None,
    environment: {gpu_name, gpu_total_bytes, driver, cuda, torch, transformers, peft, accelerate, deepspeed,
                  python, hostname, world_size, alloc_conf, host_cpus, gpu_link, pcie_gen, pcie_width, cpu_model,
                  gpu_sm_clock_max_mhz, gpu_power_limit_w, gpu_power_max_limit_w (since 2026-12-08),
                  host_op_us, host_module_us, host_adam_mparams_s, host_threads (since 2026-12-08), host_load_1m,
                  gpu_processes (memplan.probe.environment)},
    ranks: [{rank, phases: {init|forward|backward|optimizer_step: {max_allocated_bytes,
             max_reserved_bytes, device_used_bytes, host_rss_bytes, max_inactive_split_bytes and
             alloc_retries (since 2026-12-07: memplan.probe.meter)}}, step_times_s: [...],
             phase_times_s: [{forward, backward, optimizer_step: seconds} per step] (since 2026-12-07),
             categories: {memplan.spec.vocabulary.Category value: bytes}, ...extras}],
    summary: {peak_allocated_bytes, peak_reserved_bytes, peak_device_bytes, peak_host_bytes, peak_phase,
              steady_step_s (steady-state seconds per step, warm-up excluded: steady_step_seconds)}

Extras beside the required fields: ``vram_cap_card`` and ``context_bytes`` (records.with_cap_card), ``notes`` (what the built model lacks or changed), ``parameters``
({trainable, frozen} per component) and, per rank, ``status``, ``error``, ``step_phases`` (every
step's phase readings; ``phases`` is their max) and ``device``.

Writers append one line with flush + fsync; readers skip a torn last line (a run killed while
writing) and reject anything else malformed with an ``InputError`` naming path and line.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from memplan.spec.loading import InputError, read_file_bytes
from memplan.spec.record import SCHEMA, STATUSES, steady_step_seconds, warmup_steps  # noqa: F401 (re-exported)

PHASE_FIELDS = ("max_allocated_bytes", "max_reserved_bytes", "device_used_bytes", "host_rss_bytes")
SUMMARY_FIELDS = {
    "peak_allocated_bytes": "max_allocated_bytes",
    "peak_reserved_bytes": "max_reserved_bytes",
    "peak_device_bytes": "device_used_bytes",
    "peak_host_bytes": "host_rss_bytes",
}
STATUS_RANK = {"ok": 0, "timeout": 1, "error": 2, "oom": 3}  # the worst rank decides a record's status


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def summarize(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Max over ranks and phases of each reading; ``peak_phase`` is where allocated peaked."""
    readings = [(phase, reading) for rank in ranks for phase, reading in rank.get("phases", {}).items()]
    summary: dict[str, Any] = {
        key: max((int(reading.get(field) or 0) for _, reading in readings), default=0)
        for key, field in SUMMARY_FIELDS.items()
    }
    peak = max(readings, key=lambda item: int(item[1].get("max_allocated_bytes") or 0), default=(None, {}))
    summary["peak_phase"] = peak[0]
    return summary


def combine_status(ranks: list[dict[str, Any]]) -> tuple[str, str | None, dict[str, Any] | None]:
    """The record's (status, error, oom) from its ranks: oom beats error beats timeout beats ok."""
    status, error, oom = "ok", None, None
    for rank in ranks:
        rank_status = rank.get("status", "ok")
        if STATUS_RANK[rank_status] > STATUS_RANK[status]:
            status = rank_status
            error = rank.get("error")
            oom = rank.get("oom")
    return status, error, oom


def make_record(
    *,
    profile: dict[str, Any],
    plan: dict[str, Any],
    ranks: list[dict[str, Any]],
    environment: dict[str, Any],
    command: str,
    vram_cap_bytes: int | None = None,
    status: str | None = None,
    error: str | None = None,
    oom: dict[str, Any] | None = None,
    notes: Iterable[str] = (),
    parameters: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """A complete record; status/error/oom default to what the ranks report."""
    ranks = sorted(ranks, key=lambda rank: rank.get("rank", 0))
    derived_status, derived_error, derived_oom = combine_status(ranks)
    return {
        "schema": SCHEMA,
        "run_id": run_id or new_run_id(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "model": profile.get("name"),
        "profile": profile,
        "plan": plan,
        "status": status or derived_status,
        "error": error if status else derived_error,
        "oom": oom if status else derived_oom,
        "vram_cap_bytes": None if vram_cap_bytes is None else int(vram_cap_bytes),
        "environment": environment,
        "ranks": ranks,
        "summary": {**summarize(ranks), "steady_step_s": steady_step_seconds(ranks, plan)},
        "notes": list(notes),
        "parameters": parameters or {},
    }


def with_cap_card(record: dict[str, Any], vram_cap_card: str | None) -> dict[str, Any]:
    """Set the record's ``vram_cap_card`` (the catalogued card --vram-cap emulated; None for a cap in GiB)
    and ``context_bytes`` (the largest rank's device used - reserved at start: the CUDA context before
    NCCL or any model, memplan.probe.run.start_context_bytes)."""
    contexts = [rank.get("context_bytes") for rank in record.get("ranks", []) if rank.get("context_bytes")]
    record["vram_cap_card"] = vram_cap_card
    record["context_bytes"] = max(contexts) if contexts else None
    return record


def append_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Append one record as one JSON line; flush and fsync so a crash loses at most this line."""
    if record.get("schema") != SCHEMA:
        raise ValueError(f"record schema {record.get('schema')!r} is not {SCHEMA}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n"
    prefix = ""
    tail = _unterminated_tail(path)
    if tail is not None:
        offset, complete = tail
        if complete:  # a whole record without its newline: keep it, start a new line
            prefix = "\n"
        else:  # a writer killed mid-line: drop the fragment, or this line would glue onto it
            warnings.warn(f"{path}: dropping a torn last line (byte {offset} on) before appending", stacklevel=2)
            os.truncate(path, offset)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(prefix + line)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def _unterminated_tail(path: Path) -> tuple[int, bool] | None:
    """(offset, parses as a JSON object) of a last line without its newline; None if the file ends in one."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        tail, start = b"", size
        while start > 0 and b"\n" not in tail:
            step = min(start, 1 << 16)
            start -= step
            handle.seek(start)
            tail = handle.read(step) + tail
    cut = tail.rfind(b"\n") + 1
    try:
        complete = isinstance(json.loads(tail[cut:].decode("utf-8")), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        complete = False
    return start + cut, complete


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file. A torn last line (no final newline: a writer killed mid-line) is
    skipped with a warning; any other bad line raises an InputError naming path:line."""
    path = Path(path)
    data = read_file_bytes(path, name=str(path), expected="a JSONL file of probe records")
    lines = data.split(b"\n")
    torn_allowed = not data.endswith(b"\n")  # only an unterminated last line can be torn
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines) and torn_allowed
        try:
            line = raw.decode("utf-8")
            record = json.loads(line)
        except UnicodeDecodeError as error:
            if last:
                warnings.warn(f"{path}:{number}: skipping a torn last line (not UTF-8)", stacklevel=2)
                continue
            raise InputError(f"{path}:{number}: not UTF-8 text (byte {error.start}: {raw[error.start]:#04x}); "
                             "expected one JSON record per line") from None
        except json.JSONDecodeError as error:
            if last:
                warnings.warn(f"{path}:{number}: skipping a torn last line ({error.msg})", stacklevel=2)
                continue
            raise InputError(f"{path}:{number}: not a JSON record ({error.msg} at column {error.colno}); "
                             "expected one JSON object per line") from None
        except (ValueError, RecursionError) as error:  # e.g. an integer beyond Python's digit limit
            raise InputError(f"{path}:{number}: not a JSON record ({str(error).splitlines()[0][:80]})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        if "schema" not in record:
            raise InputError(f"{path}:{number}: schema None is not {SCHEMA} (the record has no schema key; "
                             "not a memplan probe record)")
        schema = record["schema"]
        if schema != SCHEMA:
            shown = repr(schema) if len(repr(schema)) <= 60 else repr(schema)[:57] + "..."
            raise InputError(f"{path}:{number}: schema {shown} is not {SCHEMA} (a record of another memplan "
                             "version or tool; re-run `memplan probe`)")
        records.append(record)
    return records
