"""The FSDP2 / fake-world GPU batch: one list of runs, read by the predictions (written first) and the batch.

    python benchmarks/fsdp_predictions.py > reports/probes/fsdp-predictions.json   # commit before the runs
    python benchmarks/fsdp_batch.py --out $OUT                                     # on one H200

A later batch pre-registers again, at its own revision, into its own file (the first one stays as written):

    python benchmarks/fsdp_predictions.py --out reports/probes/predictions/fsdp-b.json
    python benchmarks/fsdp_batch.py --out $OUT --part unrun --predictions reports/probes/predictions/fsdp-b.json

Each run is rank 0 of an N-rank job on one GPU (``memplan probe --fake-world N``), N from 2 to 1024, on
two models (Qwen2.5-1.5B text-only, Sa2VA-1B = InternViT-300M + Qwen2.5-0.5B + SAM2), with and
without CPU offload, one HSDP mesh and one DeepSpeed ZeRO-3 run on the fake group; then one real
FSDP2 run through ``accelerate launch`` with the config ``--emit-fsdp`` wrote, under a VRAM cap the
estimate says it fits. No torch is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

QWEN = {"model": "qwen2.5-1.5b", "flags": {"engine": "fsdp2", "text_len": 2048, "lora_rank": 64}}
QWEN05 = {"model": "qwen2.5-0.5b", "flags": {"engine": "fsdp2", "text_len": 2048, "lora_rank": 64}}
QWEN3 = {"model": "qwen2.5-3b", "flags": {"engine": "fsdp2", "text_len": 2048, "lora_rank": 64}}
SA2VA = {"model": "sa2va-1b", "flags": {"engine": "fsdp2", "text_len": 1024, "tiles": 1, "res": 512, "objects": 2}}


def _run(name: str, base: dict, world: int, **extra: Any) -> dict:
    flags = {**base["flags"], **extra.pop("flags", {})}
    return {"name": name, "model": base["model"], "fake_world": world, "flags": flags, **extra}


RUNS: list[dict] = [
    _run("qwen1.5b-fsdp-n2", QWEN, 2),
    _run("qwen1.5b-fsdp-n8", QWEN, 8),
    _run("qwen1.5b-fsdp-n64", QWEN, 64),
    _run("qwen1.5b-fsdp-n256", QWEN, 256),
    _run("qwen1.5b-fsdp-n1024", QWEN, 1024),
    _run("qwen1.5b-fsdp-offload-n8", QWEN, 8, flags={"offload": "all"}),
    _run("qwen1.5b-fsdp-offload-n1024", QWEN, 1024, flags={"offload": "all"}),
    _run("qwen1.5b-fsdp-noreshard-n16", QWEN, 16, plan={"engine": {"kind": "fsdp2", "fsdp": {"reshard_after_forward": False}}}),
    _run("sa2va1b-fsdp-n2", SA2VA, 2),
    _run("sa2va1b-fsdp-n16", SA2VA, 16),
    _run("sa2va1b-fsdp-n128", SA2VA, 128),
    _run("sa2va1b-fsdp-n1024", SA2VA, 1024),
    _run("sa2va1b-fsdp-offload-n16", SA2VA, 16, flags={"offload": "all"}),
    _run("sa2va1b-hsdp-4x8", SA2VA, 32, nodes=4, plan={"engine": {"kind": "fsdp2", "fsdp": {"hsdp": True}}}),
    _run("sa2va1b-zero3-n16", {"model": "sa2va-1b", "flags": {**SA2VA["flags"], "engine": None, "zero": 3}}, 16,
         timeout=240),  # DeepSpeed ZeRO-3 on the fake group (deepspeed.initialize takes longer)
    # Third set (fsdp-c.json), held out for the dim-0 padding fix found on the second: N between and
    # beyond the measured ones on Sa2VA-1B, padding with offload, a second text LLM whose k/v rows pad
    # (Qwen2.5-0.5B: 128-row k_proj/v_proj), ZeRO-3 on the fake group at another N.
    _run("sa2va1b-fsdp-n32", SA2VA, 32),
    _run("sa2va1b-fsdp-n512", SA2VA, 512),
    _run("sa2va1b-fsdp-offload-n1024", SA2VA, 1024, flags={"offload": "all"}),
    _run("qwen0.5b-fsdp-n128", QWEN05, 128),
    _run("qwen0.5b-fsdp-n1024", QWEN05, 1024),
    _run("sa2va1b-zero3-n128", {"model": "sa2va-1b", "flags": {**SA2VA["flags"], "engine": None, "zero": 3}}, 128,
         timeout=240),
    # Fourth set (fsdp-d.json, pre-registered 2026-12-03), held out for docs/stacks.md 16 (the reduce's
    # ordering, found on the accelerate run) and for everything before: a third text LLM (Qwen2.5-3B),
    # offload at small and middle N, HSDP on 2 nodes, no resharding on the multimodal model.
    _run("qwen3b-fsdp-n4", QWEN3, 4),
    _run("qwen3b-fsdp-offload-n64", QWEN3, 64, flags={"offload": "all"}),
    _run("qwen0.5b-fsdp-offload-n8", QWEN05, 8, flags={"offload": "all"}),
    _run("sa2va1b-fsdp-n8", SA2VA, 8),
    _run("sa2va1b-fsdp-offload-n128", SA2VA, 128, flags={"offload": "all"}),
    _run("sa2va1b-hsdp-2x16", SA2VA, 32, nodes=2, plan={"engine": {"kind": "fsdp2", "fsdp": {"hsdp": True}}}),
    _run("sa2va1b-fsdp-noreshard-n64", SA2VA, 64, plan={"engine": {"kind": "fsdp2", "fsdp": {"reshard_after_forward": False}}}),
]
ACCELERATE = {"name": "sa2va1b-accelerate-fsdp2", "model": "sa2va-1b",
              "flags": {"engine": "fsdp2", "text_len": 1024, "tiles": 1, "res": 512, "objects": 2, "gpus": 1}}
TIMEOUT_S = 150  # per run; most take 20-40 s (imports, random init on the CPU, 2 steps)
RECORDS = (Path("reports/probes/h200-fsdp-fake-world.jsonl"),  # the runs made so far: 5 of 15, 2026-12-02 morning,
           Path("reports/probes/h200-fsdp-fake-world-b.jsonl"),  # the other 10, afternoon (fsdp-b.json)
           Path("reports/probes/h200-fsdp-fake-world-c.jsonl"),  # the 6 added runs, 2026-12-03 (fsdp-c2.json)
           Path("reports/probes/h200-fsdp-fake-world-d.jsonl"))  # the 7 held-out runs, 2026-12-04 (fsdp-d.json)


def probe_head(run: dict) -> str:
    """The start of the probe command fsdp_batch.py runs for this run, up to --plan or --steps."""
    return " ".join(["memplan probe", "--model", run["model"], *cli_flags(run)])


def matches(run: dict, record: dict) -> bool:
    """Whether a probe record is this run's: the same model and flags (exactly, not as a prefix: n8 is
    not offload-n8), and the run's own plan file when it has one."""
    command = record.get("command", "")
    head, _, _ = command.partition(" --steps ")
    head, _, plan = head.partition(" --plan ")
    if head != probe_head(run):
        return False
    return Path(plan).name == f"{run['name']}.yaml" if "plan" in run else not plan


def records_of(run: dict, records: list[dict]) -> list[dict]:
    """The records of one run (any status), in file order."""
    return [record for record in records if matches(run, record)]


def read_all(paths: "list[Path] | tuple[Path, ...]") -> list[dict]:
    """The JSON lines of several records files, in order."""
    return [record for path in paths for record in read_jsonl(path)]


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of a records file ([] when it does not exist)."""
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def unrun(*, records: list[dict]) -> list[dict]:
    """The runs with no status-ok record among records (a crash or timeout is not a measurement)."""
    return [run for run in RUNS if not any(r.get("status") == "ok" for r in records_of(run, records))]


def plan_file(run: dict, directory: Path) -> Path | None:
    """The run's plan document as a file (runs that need a section no flag sets), else None."""
    if "plan" not in run:
        return None
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{run['name']}.yaml"
    path.write_text(yaml.safe_dump(run["plan"]), encoding="utf-8")
    return path


def plan_flags(run: dict) -> dict:
    """plan_from_flags keywords: --gpus is per node, so gpus = N / nodes."""
    nodes = run.get("nodes", 1)
    flags = {k: v for k, v in run["flags"].items() if v is not None}
    return {**flags, "gpus": run["fake_world"] // nodes, "nodes": nodes}


def cli_flags(run: dict) -> list[str]:
    """`memplan probe` flags of a fake-world run."""
    out = ["--fake-world", str(run["fake_world"])]
    if run.get("nodes", 1) > 1:
        out += ["--nodes", str(run["nodes"])]
    for key, value in run["flags"].items():
        if value is not None:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def build(run: dict, directory: Path):
    """The Plan a run measures (the same plan_from_flags the CLI uses)."""
    from memplan.spec.flags import plan_from_flags

    path = plan_file(run, directory)
    return plan_from_flags(str(path) if path else None, **plan_flags(run))
