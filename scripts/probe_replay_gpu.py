#!/usr/bin/env python3
"""Replay recorded probe runs with the current probe code and compare the readings, run by run.

Each recorded ``memplan.probe/1`` record holds the full profile and plan it ran, so the same run can be
repeated exactly: same profile, plan, steps, VRAM cap and DeepSpeed config. A refactor of the probe
(memplan/probe/*, the family adapters that build the model) must give the same parameter counts
(exactly: they do not depend on the card) and the same allocator peaks per phase (the allocator is
deterministic for the same library versions; the card may move cuBLAS/NCCL workspaces a little).

Usage (GPU machine, repository root, project installed):
    python3 scripts/probe_replay_gpu.py --out $OUT/replay.jsonl             # the RUNS below, on cuda
    python3 scripts/probe_replay_gpu.py --records FILE --run-id ID ... --device cpu --out FILE   # any records

Every replay runs in its own subprocess with a hard timeout, so one failing run cannot stop the batch;
no replay starts once ``--budget`` seconds have passed. The table printed last has, per run: the old
and new status, the old and new peak allocated bytes, the largest per-phase difference of
max_allocated_bytes in percent, whether the parameter counts (trainable and frozen per component)
are identical, and the largest per-category difference in percent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (records file, run id suffix): single-GPU runs of the probe as of commit 3fa24eb (2026-11-27), the last
# change to what the probe measures before this replay; cheap first.
RUNS: list[tuple[str, str]] = [
    ("reports/probes/h100-batch3.jsonl", "44b20bbe"),  # qwen2.5-0.5b, plain PyTorch, full LLM training
    ("reports/probes/h100-batch3.jsonl", "597c0ead"),  # sa2va-1b, plain PyTorch
    # sa2va-qwen3-vl-4b, ZeRO-2: the Qwen3-VL tower (qwen_vit adapter); recorded with older probe code
    # (e094d13), so a difference here may predate this replay
    ("reports/probes/h100-probe-dev.jsonl", "82f1a81b"),
    ("reports/probes/h100-batch3.jsonl", "af5b805b"),  # sa2va-1b, ZeRO-2
    ("reports/probes/h100-batch3.jsonl", "f5fa7c7f"),  # sa2va-1b, plain PyTorch, 24 GiB cap: OOM in backward
    ("reports/probes/h100-batch3.jsonl", "450dd42e"),  # sa2va-1b, ZeRO-0 from an emitted config, 24 GiB cap
    ("reports/probes/h100-batch3.jsonl", "b2304797"),  # sa2va-internvl3-2b, ZeRO-2, checkpointing
    ("reports/probes/h100-batch3.jsonl", "80ce67cd"),  # sa2va-1b, ZeRO-2, 8192 tokens
]
PHASES = ("init", "forward", "backward", "optimizer_step")
RUN_TIMEOUT_S = 180
DEFAULT_STEPS = 3  # memplan probe --steps default
GIB = 2**30


def find_record(path: str | Path, run_id: str) -> dict[str, Any]:
    """The record of ``path`` whose run_id ends with ``run_id``."""
    from memplan.probe.records import read_records

    matches = [record for record in read_records(path) if record["run_id"].endswith(run_id)]
    if len(matches) != 1:
        raise SystemExit(f"{path}: {len(matches)} records end with run id {run_id!r} (need exactly 1)")
    return matches[0]


def replay_spec(record: dict[str, Any], *, device: str) -> dict[str, Any]:
    """What the child needs to repeat ``record``: profile, plan, steps, cap, DeepSpeed config."""
    words = record.get("command", "").split()
    steps = int(words[words.index("--steps") + 1]) if "--steps" in words[:-1] else DEFAULT_STEPS
    cap = record.get("vram_cap_bytes")
    return {"profile": record["profile"], "plan": record["plan"], "steps": steps, "device": device,
            "vram_cap_gib": cap / GIB if cap else None, "ds_config": record.get("deepspeed_config"),
            "command": f"probe_replay_gpu.py replay of {record['run_id']}"}


def child(spec_path: Path, out: Path) -> int:
    """One replay in this process: run the probe and append its record to ``out``."""
    from memplan.probe.distributed import release_distributed
    from memplan.probe.records import append_record
    from memplan.probe.run import run_probe
    from memplan.spec.plan import Plan
    from memplan.spec.profile import Profile

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    record = run_probe(Profile.model_validate(spec["profile"]), Plan.model_validate(spec["plan"]),
                       steps=spec["steps"], vram_cap_gib=spec["vram_cap_gib"], device=spec["device"],
                       timeout_s=RUN_TIMEOUT_S - 30, command=spec["command"], ds_config=spec["ds_config"])
    if spec["ds_config"] is not None:
        record["deepspeed_config"] = spec["ds_config"]
    release_distributed()
    append_record(out, record)
    return 0


def _phase_peaks(record: dict[str, Any]) -> dict[str, int]:
    """max_allocated_bytes per phase, max over ranks."""
    peaks: dict[str, int] = {}
    for rank in record.get("ranks", []):
        for phase, reading in rank.get("phases", {}).items():
            peaks[phase] = max(peaks.get(phase, 0), int(reading["max_allocated_bytes"]))
    return peaks


def _percent(old: int, new: int) -> float:
    return 0.0 if old == new else 100.0 * (new - old) / old if old else float("inf")


def _status(record: dict[str, Any]) -> str:
    """The status, with the phase and requested bytes of an OOM ('oom@backward:2480343613')."""
    oom = record.get("oom") or {}
    return f"oom@{oom.get('phase')}:{oom.get('requested_bytes')}" if record["status"] == "oom" else record["status"]


def compare(old: dict[str, Any], new: dict[str, Any] | None) -> dict[str, Any]:
    """The comparison row of one replay (``new`` None: the replay left no record)."""
    row = {"run": old["run_id"][-8:], "model": old["model"], "old_status": _status(old),
           "new_status": _status(new) if new else "none", "old_peak": old["summary"]["peak_allocated_bytes"]}
    if new is None:
        return {**row, "new_peak": None, "phase_diff_pct": None, "params_equal": None, "category_diff_pct": None}
    old_phases, new_phases = _phase_peaks(old), _phase_peaks(new)
    shared = [phase for phase in PHASES if phase in old_phases and phase in new_phases]
    phase_diffs = [_percent(old_phases[p], new_phases[p]) for p in shared]
    old_categories = old["ranks"][0].get("categories", {}) if old["ranks"] else {}
    new_categories = new["ranks"][0].get("categories", {}) if new["ranks"] else {}
    category_diffs = [_percent(old_categories[k], new_categories.get(k, 0)) for k in old_categories if old_categories[k]]
    return {**row, "new_peak": new["summary"]["peak_allocated_bytes"],
            "phase_diff_pct": max(phase_diffs, key=abs) if phase_diffs else None,
            "params_equal": old.get("parameters") == new.get("parameters"),
            "category_diff_pct": max(category_diffs, key=abs) if category_diffs else None}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.2f}"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value / GIB:.3f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A plain text table (GiB for peaks, percent for differences)."""
    columns = ("run", "model", "old_status", "new_status", "old_peak", "new_peak", "phase_diff_pct",
               "params_equal", "category_diff_pct")
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def replay_all(targets: list[tuple[str, str]], *, out: Path, device: str, budget_s: float) -> list[dict[str, Any]]:
    """Replay every target in its own subprocess; compare each new record with its old one."""
    from memplan.probe.launch import worker_environment  # NCCL settings, TORCH_CUDA_ARCH_LIST for DeepSpeed ops
    from memplan.probe.records import read_records

    started, rows = time.monotonic(), []
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, run_id in targets:
        old = find_record(ROOT / path if not Path(path).is_absolute() else path, run_id)
        if time.monotonic() - started > budget_s:
            rows.append({**compare(old, None), "new_status": "skipped (budget)"})
            continue
        with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
            spec_path, single = Path(tmp) / "spec.json", Path(tmp) / "record.jsonl"
            spec_path.write_text(json.dumps(replay_spec(old, device=device)), encoding="utf-8")
            argv = [sys.executable, __file__, "--child", str(spec_path), "--out", str(single)]
            t0 = time.monotonic()
            try:
                done = subprocess.run(argv, cwd=ROOT, timeout=RUN_TIMEOUT_S, capture_output=True, text=True,
                                      env=worker_environment())
                tail = (done.stdout + done.stderr)[-600:] if done.returncode else ""
            except subprocess.TimeoutExpired:
                tail = f"killed after {RUN_TIMEOUT_S} s"
            new = read_records(single)[0] if single.exists() and read_records(single) else None
            if new is not None:
                with open(out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(new) + "\n")
        print(f"{old['run_id']}: {new['status'] if new else 'no record'} in {time.monotonic() - t0:.0f} s"
              + (f"\n{tail}" if tail and new is None else ""), flush=True)
        rows.append(compare(old, new))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSONL file the new records are appended to")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--records", help="replay runs of this records file (with --run-id) instead of RUNS")
    parser.add_argument("--run-id", action="append", default=[], help="run id (or its end) in --records")
    parser.add_argument("--budget", type=float, default=300.0, help="start no replay after this many seconds")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args.child, args.out)
    targets = [(args.records, run_id) for run_id in args.run_id] if args.records else RUNS
    rows = replay_all(targets, out=args.out, device=args.device, budget_s=args.budget)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
