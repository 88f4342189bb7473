"""The measurement protocol: runs planned in a run set, predicted before they run, scored after.

    memplan predict RUNSET --out predictions.jsonl   # before the batch: commit this file
    (the batch runs the same RUNSET: benchmarks/run_runset.py)
    memplan score predictions.jsonl records.jsonl    # after it

A run set (YAML or JSON, schema memplan.runset/1) lists planned runs: name, model, plan file and/or
probe flags, GPUs, VRAM cap. The prediction of each run is one JSON line (schema memplan.prediction/1)
carrying the estimator's git revision and the calibration's hash, so the git history proves what was
predicted before what was measured. Each record's side, calibration or held-out, is fixed by its run
id alone (side_of): it cannot be re-split later. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memplan.spec.loading import InputError, describe_validation_error, read_document

RUNSET_SCHEMA = "memplan.runset/1"
PREDICTION_SCHEMA = "memplan.prediction/1"
CALIBRATION_SIDE_BELOW = 85  # first byte of sha256(run_id) below this: calibration (85/256 = 33%)
SIDES = ("calibration", "held-out")

# probe flags a planned run may set: plan_from_flags keyword -> `memplan probe` option
PROBE_FLAGS = {
    "res": "--res", "zero": "--zero", "engine": "--engine", "offload": "--offload", "lora_rank": "--lora-rank",
    "tiles": "--tiles", "frames": "--frames", "text_len": "--text-len", "micro_batch": "--micro-batch",
    "objects": "--objects", "ckpt": "--ckpt", "mode": "--mode", "allocator": "--allocator",
}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def side_of(run_id: str) -> str:
    """A record's side, fixed once by its run id: sha256(run_id) first byte < 85 -> calibration (a third),
    else held-out. Run ids are drawn at random when a run starts (records.new_run_id), so nobody
    chooses a run's side, and adding records never moves an old one."""
    return SIDES[0] if hashlib.sha256(run_id.encode("utf-8")).digest()[0] < CALIBRATION_SIDE_BELOW else SIDES[1]


def scored(model: str, status: str) -> bool:
    """Records that count: runs that trained or ran out of memory (status ok/oom), not of the test-fixture
    profiles (tiny-*, made while the probe was built)."""
    return status in ("ok", "oom") and not str(model).startswith("tiny-")


def fit_side(run_id: str, model: str, status: str) -> bool:
    """A record `memplan calibrate` fits on by default: scored and on the calibration side."""
    return scored(model, status) and side_of(run_id) == SIDES[0]


class PlannedRun(BaseModel):
    """One run of a run set: what `memplan probe` runs and `memplan predict` estimates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model: str | None = None  # profile name or path; None: the plan file's model (else sa2va-4b)
    plan: str | None = None  # plan file; flags override it
    flags: dict[str, Any] = {}  # plan_from_flags keywords: res, zero, engine, offload, ckpt, text_len, ...
    gpus: int = Field(default=1, ge=1, le=64)
    vram_cap: float | str | None = None  # GiB as CUDA reports them, or a card name (rtx-3090)
    timeout_s: int = Field(default=120, ge=10, le=3600)
    purpose: str = ""  # verdict, context, allocated: what the run is for
    # PYTORCH_CUDA_ALLOC_CONF for this run's probe (e.g. "expandable_segments:True"); None: the caller's
    # environment. The estimate reads its expandable_segments setting as stack.allocator
    # (memplan.spec.allocator.allocator_of); its other options are not modelled.
    alloc_conf: str | None = Field(default=None, max_length=200)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r}: letters, digits, '.', '_', '-' (up to 80), starting with a letter or digit")
        return value

    @field_validator("flags")
    @classmethod
    def _flags(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(PROBE_FLAGS))
        if unknown:
            raise ValueError(f"unknown flag {unknown[0]!r}; allowed: {', '.join(PROBE_FLAGS)}")
        return value


class RunSet(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["memplan.runset/1"] = Field(alias="schema")
    batch: str  # the batch's name: run keys are batch/name
    card: str  # the catalogue name of the card the batch runs on (uncapped runs are estimated on it)
    steps: int = Field(default=3, ge=1, le=100)
    description: str = ""
    runs: list[PlannedRun] = Field(min_length=1)

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r}: letters, digits, '.', '_', '-' (up to 80)")
        return value

    @model_validator(mode="after")
    def _unique(self) -> "RunSet":
        seen: set[str] = set()
        for run in self.runs:
            if run.name in seen:
                raise ValueError(f"runs: name {run.name!r} appears twice (run keys must be unique)")
            seen.add(run.name)
        return self

    def key(self, run: PlannedRun) -> str:
        return f"{self.batch}/{run.name}"


def load_runset(path: str | Path) -> RunSet:
    """A run set from YAML/JSON; bad input raises InputError naming the file and field."""
    path = Path(path)
    document = read_document(path)
    if not isinstance(document, dict):
        raise InputError(f"{path}: expected a run set mapping (schema: {RUNSET_SCHEMA}), got {type(document).__name__}")
    if document.get("schema") != RUNSET_SCHEMA:
        raise InputError(f"{path}: schema={document.get('schema')!r}: expected {RUNSET_SCHEMA!r}")
    try:
        runset = RunSet.model_validate(document)
    except ValidationError as error:
        raise InputError(describe_validation_error(error, str(path), RunSet)) from None
    from memplan.spec.gpus import get_gpu

    try:
        get_gpu(runset.card)
    except InputError as error:
        raise InputError(f"{path}: card={runset.card!r}: {error}") from None
    return runset


def resolve_plan_file(runset_path: Path, plan: str | None) -> str | None:
    """A run's plan file: as given when it exists (relative to the working directory), else relative
    to the run set's folder, else the name (a shipped plan)."""
    if plan is None:
        return None
    if Path(plan).exists():
        return plan
    beside = runset_path.parent / plan
    return str(beside) if beside.exists() else plan


def probe_argv(runset: RunSet, run: PlannedRun, runset_path: Path) -> list[str]:
    """The `memplan probe` arguments of a planned run (the batch runner adds --out and --timeout)."""
    argv = ["--gpus", str(run.gpus), "--steps", str(runset.steps)]
    if run.model:
        argv += ["--model", run.model]
    if run.plan:
        argv += ["--plan", resolve_plan_file(runset_path, run.plan)]
    for key, value in run.flags.items():
        option = PROBE_FLAGS[key]
        if key == "ckpt":
            argv.append("--ckpt" if value else "--no-ckpt")
        else:
            argv += [option, str(value)]
    if run.vram_cap is not None:
        argv += ["--vram-cap", str(run.vram_cap)]
    return argv


# Plan fields added to the schema after predictions had been written with it (hardware.nodes,
# engine.zero_hpz_partition_size, engine.fsdp: the multi-node/FSDP2 work), each with the value that means
# what the older schema meant (one node, no hpZ, no FSDP section). A record written by a newer probe holds
# them at these values for the same run; its fingerprint leaves them out, so it names the same plan as a
# prediction written without them (stacks-a/-b were predicted at 1878239, before these fields, and run after).
LATER_PLAN_FIELDS: dict[tuple[str, str], Any] = {
    ("hardware", "nodes"): 1, ("engine", "zero_hpz_partition_size"): 1, ("engine", "fsdp"): None,
    ("stack", "checkpoint_scope"): None,  # added after the H200 stack runs (None: the stack's own default)
    ("stack", "allocator"): "default",  # added after h200-batch8 (records before it: environment.alloc_conf)
}
# what a record does not carry from the run set (the card the run is estimated on) and labels
CAPACITY_FIELDS = (("hardware", "vram_gib"), ("hardware", "gpu"), ("hardware", "host_ram_gib"))
LABEL_FIELDS = ("name", "description")


def _plan_for_comparison(plan_document: dict[str, Any]) -> dict[str, Any]:
    document = json.loads(json.dumps(plan_document))
    for key in LABEL_FIELDS:
        document.pop(key, None)
    for section, key in CAPACITY_FIELDS:
        (document.get(section) or {}).pop(key, None)
    for (section, key), default in LATER_PLAN_FIELDS.items():
        part = document.get(section)
        if isinstance(part, dict) and key in part and part[key] == default:
            part.pop(key)
    return document


def plan_fingerprint(plan_document: dict[str, Any], *, later_fields: bool = False) -> str:
    """sha256 of a plan without its hardware capacity fields (vram_gib, gpu, host RAM), which the
    probe's record does not carry from the run set, and without the fields added to the schema later
    (LATER_PLAN_FIELDS) where they hold the value the older schema meant: the same fingerprint means
    the same run, whichever of the two schemas wrote it. ``later_fields=True``: the fingerprint that
    keeps them (what `memplan predict` wrote between their addition and this rule)."""
    if later_fields:
        document = json.loads(json.dumps(plan_document))
        hardware = document.get("hardware") or {}
        for key in ("vram_gib", "gpu", "host_ram_gib"):
            hardware.pop(key, None)
        for key in LABEL_FIELDS:
            document.pop(key, None)
    else:
        document = _plan_for_comparison(plan_document)
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def plan_fingerprints(plan_document: dict[str, Any]) -> set[str]:
    """Every fingerprint a prediction of this plan may carry (with and without LATER_PLAN_FIELDS)."""
    return {plan_fingerprint(plan_document), plan_fingerprint(plan_document, later_fields=True)}


def plan_differences(predicted: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """The fields that matter where two plan documents differ ("engine.zero_stage: 2 != 3"): labels,
    capacity fields and later fields at their older meaning left out; a field one side lacks counts as
    absent. Empty: the same run."""
    a, b = _plan_for_comparison(predicted), _plan_for_comparison(recorded)

    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                out.update(flat(item, f"{prefix}.{key}" if prefix else str(key)))
            return out
        return {prefix: value}

    fa, fb = flat(a), flat(b)
    missing = "<absent>"
    return [f"{key}: {fa.get(key, missing)!r} != {fb.get(key, missing)!r}" for key in sorted(set(fa) | set(fb))
            if fa.get(key, missing) != fb.get(key, missing)]


def estimator_revision(*, also: tuple[str, ...] = ()) -> str:
    """git rev-parse HEAD of the checkout memplan runs from (+ "-dirty" when memplan/, or a path of
    ``also`` relative to the checkout, has uncommitted changes), else the installed package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "memplan", *also],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"memplan {version('memplan')}"
        except PackageNotFoundError:
            return "unknown"


def calibration_hash(calibration) -> str:
    """sha256 of the calibration terms (canonical JSON of the Calibration model)."""
    document = calibration.model_dump(mode="json", by_alias=True)
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Prediction lines of a JSONL file; a malformed line raises InputError naming path:line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected the JSONL `memplan predict` writes)")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise InputError(f"{path}:{number}: not a JSON line ({str(error).splitlines()[0][:60]})") from None
        if not isinstance(item, dict) or item.get("schema") != PREDICTION_SCHEMA:
            got = item.get("schema") if isinstance(item, dict) else type(item).__name__
            raise InputError(f"{path}:{number}: schema={got!r}: expected {PREDICTION_SCHEMA!r} "
                             "(a line `memplan predict` writes)")
        if not isinstance(item.get("run_key"), str) or not isinstance(item.get("predicted"), dict):
            raise InputError(f"{path}:{number}: run_key/predicted missing: expected a line `memplan predict` writes")
        out.append(item)
    if not out:
        raise InputError(f"{path}: no predictions in the file")
    return out
