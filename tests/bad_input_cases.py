"""Every bad-input case of the CLI, shared by tests/test_bad_input.py and scripts/bad_input_table.py.

Each case writes its files into an empty working directory, runs one command through typer's
CliRunner on ``memplan.cli.main.app`` there (relative paths, so messages are the same everywhere) and
expects exit code 2 and exactly one output line, ``error: ...``, containing every ``needle`` (the
field, the value and what is allowed).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

DIR = object()  # a file entry that is a directory
Content = Union[str, bytes, object, Callable[[], str]]


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the input, in words (the table's first column)
    args: tuple[str, ...]
    needles: tuple[str, ...]
    files: dict[str, Content] = field(default_factory=dict)
    usage: bool = False  # a flag/argument parse error: handled by options.OneLineErrors on the app's group

    @property
    def command(self) -> str:
        return " ".join(self.args[:2]) if self.args[:1] == ("profile",) else self.args[0]


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    output: str  # stdout and stderr, interleaved
    exception: BaseException | None

    @property
    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]


# --------------------------------------------------------------------------- fixtures as text

TINY_PROFILE = (Path(__file__).parent / "fixtures" / "profiles" / "tiny-sa2va.yaml").read_text()

CPU_PLAN = {"engine": {"kind": "pytorch", "zero_stage": 0}, "precision": {"compute": "fp32"},
            "components": {"llm": {"train": "lora", "lora": {"rank": 8}}},
            "inputs": {"text_tokens": 64, "tiles": 1, "sam2_resolution": 64, "objects": 2}}


def record(**changes) -> dict:
    """A valid probe record (schema memplan.probe/1) of the tiny profile, fixed run id and time."""
    from memplan.spec.loading import profile_from_document
    from memplan.spec.plan import Plan
    from memplan.probe.records import make_record
    import yaml

    profile = profile_from_document(yaml.safe_load(TINY_PROFILE), "tiny-sa2va.yaml")
    reading = {"max_allocated_bytes": 50 << 20, "max_reserved_bytes": 64 << 20,
               "device_used_bytes": 600 << 20, "host_rss_bytes": 2 << 30}
    rank = {"rank": 0, "status": "ok", "phases": {p: dict(reading) for p in ("init", "forward", "backward", "optimizer_step")}}
    out = make_record(profile=profile.model_dump(mode="json"), plan=Plan.model_validate(CPU_PLAN).model_dump(mode="json"),
                      ranks=[rank], environment={"gpu_name": "test"}, command="test", run_id="run-1")
    out["created"] = "2025-01-01T00:00:00+00:00"
    out.update(changes)
    return out


def jsonl(*records: dict | str, torn: str | None = None) -> Callable[[], str]:
    def text() -> str:
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        return "".join(line + "\n" for line in lines) + (torn or "")
    return text


def with_plan(**plan_changes) -> Callable[[], dict]:
    return lambda: {**record()["plan"], **plan_changes}


def record_with(**changes) -> Callable[[], str]:
    """One valid line, then a record whose fields are replaced (callables evaluated lazily)."""
    def text() -> str:
        values = {k: v() if callable(v) else v for k, v in changes.items()}
        return json.dumps(record()) + "\n" + json.dumps(record(run_id="run-2", **values)) + "\n"
    return text


PROJECTOR_GAP = """name: gap
source: test
vision: internvit-300m
projector: {input_size: 1024, hidden_size: 896, output_size: 1024}
llm: qwen2.5-0.5b
"""

# --------------------------------------------------------------------------- the cases

E = "estimate"
CASES: list[Case] = [
    # ---- plan files: syntax, encoding, shape of the document
    Case("plan-malformed-yaml", "plan YAML with an unclosed bracket", (E, "--plan", "p.yaml"),
         ("p.yaml", "malformed YAML", "line 2"), {"p.yaml": "hardware: {num_gpus: [\n"}),
    Case("plan-malformed-json", "plan JSON cut short", (E, "--plan", "p.json"),
         ("p.json", "malformed JSON", "line 1"), {"p.json": '{"hardware": '}),
    Case("plan-missing", "plan file that does not exist", (E, "--plan", "nothere.yaml"),
         ("nothere.yaml", "file not found")),
    Case("plan-unknown-name", "shipped plan name misspelt", (E, "--plan", "sa2va-oficial"),
         ("plan='sa2va-oficial'", "closest: sa2va-official")),
    Case("plan-directory", "plan path is a directory", (E, "--plan", "plans.yaml"),
         ("plans.yaml", "is a directory"), {"plans.yaml": DIR}),
    Case("plan-not-utf8", "plan with non-UTF-8 bytes", (E, "--plan", "p.yaml"),
         ("p.yaml", "not UTF-8", "0xff"), {"p.yaml": b"name: caf\xff\n"}),
    Case("plan-empty", "empty plan file", (E, "--plan", "p.yaml"), ("p.yaml", "empty document", "mapping"),
         {"p.yaml": ""}),
    Case("plan-top-list", "plan whose top level is a list", (E, "--plan", "p.yaml"),
         ("p.yaml", "top level is a list", "mapping"), {"p.yaml": "- hardware\n- engine\n"}),
    # ---- unknown keys and wrong types
    Case("plan-unknown-key", "unknown top-level key", (E, "--plan", "p.yaml"),
         ("unknown key 'gpus'=4", "allows: name,", "hardware"), {"p.yaml": "gpus: 4\n"}),
    Case("plan-unknown-nested-key", "unknown key in engine", (E, "--plan", "p.yaml"),
         ("unknown key 'engine.zero'=3", "engine allows: kind, zero_stage"), {"p.yaml": "engine: {zero: 3}\n"}),
    Case("plan-unknown-deep-key", "unknown key in components.llm.lora", (E, "--plan", "p.yaml"),
         ("unknown key 'components.llm.lora.rnk'=8", "allows: rank, alpha"),
         {"p.yaml": "components: {llm: {train: lora, lora: {rnk: 8}}}\n"}),
    Case("plan-wrong-type-int", "num_gpus as a word", (E, "--plan", "p.yaml"),
         ("hardware.num_gpus='two'", "valid integer"), {"p.yaml": "hardware: {num_gpus: two}\n"}),
    Case("plan-wrong-type-section", "a section given as a number", (E, "--plan", "p.yaml"),
         ("hardware=4", "dictionary"), {"p.yaml": "hardware: 4\n"}),
    Case("plan-wrong-literal", "unknown engine kind", (E, "--plan", "p.yaml"),
         ("engine.kind='megatron'", "'pytorch', 'deepspeed' or 'fsdp2'"), {"p.yaml": "engine: {kind: megatron}\n"}),
    Case("plan-fractional-int", "fractional micro-batch", (E, "--plan", "p.yaml"),
         ("inputs.micro_batch=1.5", "integer"), {"p.yaml": "inputs: {micro_batch: 1.5}\n"}),
    Case("plan-nan", "NaN VRAM", (E, "--plan", "p.yaml"), ("hardware.vram_gib=nan", "finite"),
         {"p.yaml": "hardware: {vram_gib: .nan}\n"}),
    Case("flag-inf", "--host-ram inf", (E, "--host-ram", "inf"), ("hardware.host_ram_gib=inf", "finite")),
    # ---- impossible combinations
    Case("zero-on-pytorch-plan", "ZeRO stage on a plain PyTorch plan", (E, "--plan", "p.yaml"),
         ("engine.zero_stage=2", "needs engine.kind=deepspeed, not pytorch"),
         {"p.yaml": "engine: {kind: pytorch, zero_stage: 2}\n"}),
    Case("zero-on-pytorch-flags", "--engine pytorch --zero 3", (E, "--engine", "pytorch", "--zero", "3"),
         ("engine.zero_stage=3", "needs engine.kind=deepspeed")),
    Case("ds-knob-on-pytorch", "a ZeRO-3 knob on a plain PyTorch plan", (E, "--plan", "p.yaml"),
         ("engine.stage3_max_live_parameters=1000", "DeepSpeed option", "engine.kind=pytorch"),
         {"p.yaml": "engine: {kind: pytorch, zero_stage: 0, stage3_max_live_parameters: 1000}\n"}),
    Case("offload-on-pytorch", "optimizer offload on plain PyTorch", (E, "--plan", "p.yaml"),
         ("engine.offload_optimizer=cpu", "needs engine.kind=deepspeed"),
         {"p.yaml": "engine: {kind: pytorch, zero_stage: 0, offload_optimizer: cpu}\n"}),
    Case("param-offload-stage2-plan", "parameter offload at ZeRO-2 (plan)", (E, "--plan", "p.yaml"),
         ("engine.offload_params=cpu", "needs zero_stage=3, not 2"),
         {"p.yaml": "engine: {zero_stage: 2, offload_params: cpu}\n"}),
    Case("param-offload-stage2-flags", "--zero 2 --offload all", (E, "--zero", "2", "--offload", "all"),
         ("engine.offload_params=cpu", "needs zero_stage=3, not 2")),
    Case("optimizer-offload-stage0", "--zero 0 --offload optimizer", (E, "--zero", "0", "--offload", "optimizer"),
         ("engine.offload_optimizer=cpu", "zero_stage >= 1, not 0")),
    Case("cpu-adam-no-offload", "cpu_adam without optimizer offload", (E, "--plan", "p.yaml"),
         ("optimizer.kind=cpu_adam", "offload_optimizer=cpu or nvme, not none"),
         {"p.yaml": "optimizer: {kind: cpu_adam}\n"}),
    Case("lora-rank-above-width", "LoRA rank above Qwen2.5-0.5B's k_proj width (128)",
         (E, "-m", "sa2va-1b", "--lora-rank", "129"), ("components.llm.lora.rank=129", "(128)", "allowed: 1..128")),
    Case("sequence-short-of-image-tokens", "a sequence too short for its 13 tiles of image tokens",
         (E, "--tiles", "13", "--text-len", "2048"), ("inputs.text_tokens=2048", "at least 3334")),
    Case("lora-rank-above-cap", "LoRA rank above the field's cap", (E, "--lora-rank", "100000"),
         ("components.llm.lora.rank=100000", "less than or equal to 4096")),
    Case("vision-lora-rank-above-width", "vision LoRA rank above InternViT-300M's width (1024)",
         (E, "--plan", "p.yaml"), ("components.vision.lora.rank=2000", "allowed: 1..1024"),
         {"p.yaml": "components: {vision: {train: lora, lora: {rank: 2000}}}\n"}),
    Case("lora-on-sam2-decoder", "LoRA on the SAM2 decoder", (E, "--plan", "p.yaml"),
         ("components.sam2_decoder.train=lora", "allowed here: frozen, full"),
         {"p.yaml": "components: {sam2_decoder: {train: lora}}\n"}),
    Case("modules-to-save-frozen", "modules_to_save on a frozen LLM", (E, "--plan", "p.yaml"),
         ("components.llm.modules_to_save=['lm_head']", "train=lora or full, not frozen"),
         {"p.yaml": "components: {llm: {train: frozen, modules_to_save: [lm_head]}}\n"}),
    Case("lora-rank-flag-full-llm", "--lora-rank on a fully trained LLM", (E, "--plan", "p.yaml", "--lora-rank", "8"),
         ("--lora-rank=8", "needs components.llm.train=lora, not full"),
         {"p.yaml": "components: {llm: {train: full}}\n"}),
    # ---- nodes, FSDP2, ZeRO++
    Case("fsdp-offload-optimizer", "--offload optimizer with --engine fsdp2",
         (E, "--engine", "fsdp2", "--offload", "optimizer"), ("--offload=optimizer", "allowed with --engine fsdp2: none, all")),
    Case("plan-fsdp-zero-stage", "a ZeRO stage on an FSDP2 plan", (E, "--plan", "p.yaml"),
         ("engine.zero_stage=3", "a DeepSpeed option, but engine.kind=fsdp2"),
         {"p.yaml": "engine: {kind: fsdp2, zero_stage: 3}\n"}),
    Case("plan-mics", "MiCS shard size", (E, "--plan", "p.yaml"), ("engine.mics_shard_size=8", "removed in DeepSpeed 0.19"),
         {"p.yaml": "engine: {zero_stage: 3, mics_shard_size: 8}\n"}),
    Case("plan-hpz-not-dividing", "hpZ group that does not divide the GPUs", (E, "--plan", "p.yaml"),
         ("engine.zero_hpz_partition_size=4", "must divide hardware.num_gpus=6"),
         {"p.yaml": "hardware: {num_gpus: 6}\nengine: {zero_stage: 3, zero_hpz_partition_size: 4}\n"}),
    Case("plan-nodes-uneven", "GPUs not a multiple of the nodes", (E, "--plan", "p.yaml"),
         ("hardware.num_gpus=6", "not a multiple of hardware.nodes=4"), {"p.yaml": "hardware: {num_gpus: 6, nodes: 4}\n"}),
    # ---- hardware and input ranges
    Case("gpus-zero", "--gpus 0", (E, "--gpus", "0"), ("hardware.num_gpus=0", "greater than 0")),
    Case("gpus-negative", "--gpus -2", (E, "--gpus", "-2"), ("hardware.num_gpus=-2", "greater than 0")),
    Case("gpus-too-many", "--gpus 70000", (E, "--gpus", "70000"), ("hardware.num_gpus=70000", "less than or equal to 65536")),
    Case("vram-zero", "--vram 0", (E, "--vram", "0"), ("hardware.vram_gib=0", "greater than 0")),
    Case("vram-negative", "--vram -24", (E, "--vram", "-24"), ("hardware.vram_gib=-24", "greater than 0")),
    Case("tiles-high", "--tiles 100", (E, "--tiles", "100"), ("inputs.tiles=100", "less than or equal to 64")),
    Case("tiles-negative", "--tiles -1", (E, "--tiles", "-1"), ("inputs.tiles=-1", "greater than or equal to 0")),
    Case("res-not-multiple", "--res 1000 (not a multiple of 64)", (E, "--res", "1000"),
         ("inputs.sam2_resolution=1000", "multiple of 64")),
    Case("res-high", "--res 8192", (E, "--res", "8192"), ("inputs.sam2_resolution=8192", "less than or equal to 4096")),
    Case("res-low", "--res 0", (E, "--res", "0"), ("inputs.sam2_resolution=0", "greater than or equal to 64")),
    Case("text-len-zero", "--text-len 0", (E, "--text-len", "0"), ("inputs.text_tokens=0", "greater than 0")),
    Case("objects-high", "--objects 65", (E, "--objects", "65"), ("inputs.objects=65", "less than or equal to 64")),
    Case("micro-batch-zero", "--micro-batch 0", (E, "--micro-batch", "0"), ("inputs.micro_batch=0", "greater than 0")),
    # ---- models (profiles)
    Case("model-unknown", "unknown model name", (E, "-m", "sa2va-4c"), ("model='sa2va-4c'", "closest: sa2va-4b")),
    Case("model-unknown-in-plan", "a plan naming an unknown model", (E, "--plan", "p.yaml"),
         ("model='sa2va-9b'", "closest: sa2va-8b"), {"p.yaml": "model: sa2va-9b\n"}),
    Case("profile-missing", "profile file that does not exist", (E, "-m", "mine.yaml"), ("mine.yaml", "file not found")),
    Case("profile-directory", "profile path is a directory", (E, "-m", "mine.yaml"), ("mine.yaml", "is a directory"),
         {"mine.yaml": DIR}),
    Case("profile-malformed", "profile YAML with a bad indent", (E, "-m", "mine.yaml"), ("mine.yaml", "malformed YAML"),
         {"mine.yaml": "name: x\n  source: y\n"}),
    Case("profile-not-utf8", "profile with Latin-1 bytes", (E, "-m", "mine.yaml"), ("mine.yaml", "not UTF-8", "0xe9"),
         {"mine.yaml": b"name: caf\xe9\n"}),
    Case("profile-empty", "empty profile file", (E, "-m", "mine.yaml"), ("mine.yaml", "empty document"),
         {"mine.yaml": "\n"}),
    Case("profile-no-source", "profile without source", (E, "-m", "mine.yaml"),
         ("mine.yaml", "missing required field 'source'"), {"mine.yaml": "name: x\nllm: qwen2.5-0.5b\n"}),
    Case("profile-unknown-key", "unknown key in a component", (E, "-m", "mine.yaml"),
         ("unknown key 'llm.hiden_size'=10", "llm allows: kind, architecture"),
         {"mine.yaml": "name: x\nsource: y\nllm: {from: qwen2.5-0.5b, hiden_size: 10}\n"}),
    Case("profile-unknown-top-key", "unknown top-level key in a profile", (E, "-m", "mine.yaml"),
         ("unknown key 'decoder'", "allows: name, description, source, llm"),
         {"mine.yaml": "name: x\nsource: y\nllm: qwen2.5-0.5b\ndecoder: {}\n"}),
    Case("profile-wrong-type", "num_layers as a word", (E, "-m", "mine.yaml"),
         ("llm.num_layers='many'", "valid integer"),
         {"mine.yaml": "name: x\nsource: y\nllm: {from: qwen2.5-0.5b, num_layers: many}\n"}),
    Case("profile-negative", "negative hidden size", (E, "-m", "mine.yaml"),
         ("llm.hidden_size=-896", "greater than 0"),
         {"mine.yaml": "name: x\nsource: y\nllm: {from: qwen2.5-0.5b, hidden_size: -896}\n"}),
    Case("profile-unknown-component", "component name misspelt", (E, "-m", "mine.yaml"),
         ("llm='qwen2.5-0.6b'", "unknown component", "closest: qwen2.5-0.5b"),
         {"mine.yaml": "name: x\nsource: y\nllm: qwen2.5-0.6b\n"}),
    Case("profile-unknown-kind", "unknown component kind", (E, "-m", "mine.yaml"),
         ("kind='decoder'", "expected one of llm, vision"), {"mine.yaml": "name: x\nsource: y\nkind: decoder\n"}),
    Case("profile-slot-kind", "an LLM component in the vision slot", (E, "-m", "mine.yaml"),
         ("mine.yaml", "vision='qwen2.5-0.5b'", "'llm' component", "needs kind='vision'"), {"mine.yaml": "name: x\nsource: y\nvision: qwen2.5-0.5b\n"}),
    Case("profile-heads", "kv heads that do not divide the heads", (E, "-m", "mine.yaml"),
         ("num_heads(14) % num_kv_heads(3)",),
         {"mine.yaml": "name: x\nsource: y\nllm: {from: qwen2.5-0.5b, num_kv_heads: 3}\n"}),
    Case("profile-projector-gap", "projector output width != LLM width", (E, "-m", "mine.yaml"),
         ("projector.output_size(1024) != llm.hidden_size(896)",), {"mine.yaml": PROJECTOR_GAP}),
    Case("profile-no-projector", "vision and LLM without a projector", (E, "-m", "mine.yaml"),
         ("projector: missing",), {"mine.yaml": "name: x\nsource: y\nvision: internvit-300m\nllm: qwen2.5-0.5b\n"}),
    Case("profile-seg-head-gap", "seg head input != LLM width", (E, "-m", "mine.yaml"),
         ("seg_head.input_size(1024) != llm.hidden_size(896)",),
         {"mine.yaml": "name: x\nsource: y\nllm: qwen2.5-0.5b\nseg_head: {input_size: 1024}\n"}),
    Case("profile-sam2-stages", "a SAM2 stage of 10**19 blocks", (E, "-m", "mine.yaml"),
         ("sam2.stages=[2, 6, 10000000000000000000, 2]", "1..1024"),
         {"mine.yaml": "name: x\nsource: y\nsam2: {from: sam2-hiera-large, stages: [2, 6, 10000000000000000000, 2]}\n"}),
    Case("profile-not-a-mapping-slot", "a component given as a number", (E, "-m", "mine.yaml"),
         ("llm=5", "expected a component name or a mapping"), {"mine.yaml": "name: x\nsource: y\nllm: 5\n"}),
    Case("profile-key-with-newline", "a key holding a line break", (E, "-m", "mine.yaml"),
         ("unknown key", "'a\\nb'"), {"mine.yaml": 'name: x\nsource: y\nllm: {from: qwen2.5-0.5b, "a\\nb": 1}\n'}),
    # ---- calibration files
    Case("calibration-foreign-schema", "calibration of another schema", (E, "--calibration", "cal.yaml"),
         ("schema='memplan.calibration/0'", "expected 'memplan.calibration/1'"),
         {"cal.yaml": "schema: memplan.calibration/0\nreserved_ratio: 0.1\n"}),
    Case("calibration-no-schema", "calibration without a schema", (E, "--calibration", "cal.yaml"),
         ("schema missing", "memplan.calibration/1"), {"cal.yaml": "reserved_ratio: 0.1\n"}),
    Case("calibration-unknown-key", "calibration with an unknown key", (E, "--calibration", "cal.yaml"),
         ("unknown key 'ratio'=0.1", "allows: schema, allocated_constant_bytes"),
         {"cal.yaml": "schema: memplan.calibration/1\nratio: 0.1\n"}),
    Case("calibration-band-unknown-allocator", "calibration band for an allocator setting that has none",
         (E, "--calibration", "cal.yaml"), ("tight_bands.'expandable'", "allowed: expandable_segments"),
         {"cal.yaml": "schema: memplan.calibration/1\ntight_bands:\n  expandable: 0.01\n"}),
    Case("calibration-band-too-wide", "calibration band over half the card", (E, "--calibration", "cal.yaml"),
         ("tight_bands.expandable_segments=0.9", "less than or equal to 0.5"),
         {"cal.yaml": "schema: memplan.calibration/1\ntight_bands:\n  expandable_segments: 0.9\n"}),
    Case("calibration-wrong-type", "calibration ratio as a word", (E, "--calibration", "cal.yaml"),
         ("reserved_ratio='high'", "valid number"), {"cal.yaml": "schema: memplan.calibration/1\nreserved_ratio: high\n"}),
    Case("calibration-missing", "calibration file that does not exist", (E, "--calibration", "cal.yaml"),
         ("cal.yaml", "file not found")),
    # ---- probe records: validate and calibrate
    Case("validate-missing", "record file that does not exist", ("validate", "r.jsonl"), ("r.jsonl", "file not found")),
    Case("validate-directory", "record path is a directory", ("validate", "r.jsonl"), ("r.jsonl", "is a directory"),
         {"r.jsonl": DIR}),
    Case("validate-empty", "empty record file", ("validate", "r.jsonl"),
         ("records=['r.jsonl']", "no probe records", "memplan.probe/1"), {"r.jsonl": ""}),
    Case("validate-bad-middle-line", "a bad line between records", ("validate", "r.jsonl"),
         ("r.jsonl:2", "not a JSON record"), {"r.jsonl": jsonl(record(), "{oops", record())}),
    Case("validate-not-utf8-line", "a non-UTF-8 line between records", ("validate", "r.jsonl"),
         ("r.jsonl:1", "not UTF-8", "0xff"), {"r.jsonl": b"\xff\xfe\n" + json.dumps({"a": 1}).encode() + b"\n"}),
    Case("validate-not-object", "a JSON list instead of a record", ("validate", "r.jsonl"),
         ("r.jsonl:1", "expected a JSON object, got list"), {"r.jsonl": "[1, 2]\n"}),
    Case("validate-foreign-schema", "a record of another schema", ("validate", "r.jsonl"),
         ("r.jsonl:1", "schema 'memplan.probe/0' is not memplan.probe/1"),
         {"r.jsonl": jsonl(record(schema="memplan.probe/0"))}),
    Case("validate-missing-schema", "a record without a schema", ("validate", "r.jsonl"),
         ("r.jsonl:1", "schema None is not memplan.probe/1"), {"r.jsonl": jsonl({"run_id": "x", "plan": {}})}),
    Case("validate-record-bad-plan", "a record whose plan does not validate", ("validate", "r.jsonl"),
         ("run 'run-2': plan", "hardware.num_gpus=0", "greater than 0"),
         {"r.jsonl": record_with(plan=with_plan(hardware={"num_gpus": 0}))}),
    Case("validate-record-no-profile", "a record without its profile", ("validate", "r.jsonl"),
         ("run 'run-2'", "profile=None", "expected the profile mapping"), {"r.jsonl": record_with(profile=None)}),
    Case("validate-record-bad-status", "a record with an unknown status", ("validate", "r.jsonl"),
         ("status='crashed'", "expected one of ok, oom, error, timeout"), {"r.jsonl": record_with(status="crashed")}),
    Case("validate-record-bad-readings", "a record whose summary is text", ("validate", "r.jsonl"),
         ("run 'run-2'", "summary/ranks", "integers"), {"r.jsonl": record_with(summary={"peak_allocated_bytes": "lots"})}),
    Case("validate-calibration-foreign", "validate with a foreign calibration", ("validate", "r.jsonl", "--calibration", "c.json"),
         ("schema='other/1'", "expected 'memplan.calibration/1'"),
         {"r.jsonl": jsonl(record()), "c.json": '{"schema": "other/1"}'}),
    Case("calibrate-foreign-schema", "calibrate on a record of another schema", ("calibrate", "r.jsonl", "--out", "c.yaml"),
         ("r.jsonl:2", "schema 'memplan.probe/2' is not memplan.probe/1"),
         {"r.jsonl": jsonl(record(), record(schema="memplan.probe/2"))}),
    Case("calibrate-no-ok-runs", "calibrate on OOM runs only", ("calibrate", "r.jsonl", "--out", "c.yaml", "--all-sides"),
         ("no successful ('ok') runs",), {"r.jsonl": jsonl(record(status="oom"))}),
    Case("calibrate-out-directory", "calibrate --out a directory", ("calibrate", "r.jsonl", "--out", "outdir"),
         ("--out=outdir", "is a directory"), {"r.jsonl": jsonl(record()), "outdir": DIR}),
    Case("calibrate-torn-only", "a record file holding only a torn line", ("calibrate", "r.jsonl", "--out", "c.yaml"),
         ("no probe records", "1 torn last line(s) skipped"), {"r.jsonl": '{"schema": "memplan.pro'}),
    # ---- profile import / compose
    Case("import-missing", "config.json that does not exist", ("profile", "import", "config.json", "--out", "o.yaml"),
         ("config.json", "file not found")),
    Case("import-malformed", "config.json cut short", ("profile", "import", "config.json", "--out", "o.yaml"),
         ("config.json", "malformed JSON"), {"config.json": '{"model_type": "qwen2", '}),
    Case("import-not-mapping", "config.json holding a list", ("profile", "import", "config.json", "--out", "o.yaml"),
         ("config.json", "top level is a list"), {"config.json": "[1, 2]"}),
    Case("import-unknown-type", "config of an unsupported model_type", ("profile", "import", "config.json", "--out", "o.yaml"),
         ("model_type='bert'", "not importable", "known: qwen2"), {"config.json": '{"model_type": "bert"}'}),
    Case("import-wrong-type", "hidden_size as text", ("profile", "import", "config.json", "--out", "o.yaml"),
         ("hidden_size='wide'", "positive integer"), {"config.json": '{"model_type": "qwen2", "hidden_size": "wide"}'}),
    Case("import-negative", "negative layer count in the text config", ("profile", "import", "config.json", "--out", "o.yaml"),
         ("text_config.num_hidden_layers=-2", "positive integer"),
         {"config.json": '{"model_type": "internvl", "text_config": {"num_hidden_layers": -2}}'}),
    Case("import-out-directory", "import --out a directory", ("profile", "import", "config.json", "--out", "outdir"),
         ("--out=outdir", "is a directory"), {"config.json": '{"model_type": "qwen2"}', "outdir": DIR}),
    Case("compose-unknown", "compose with an unknown LLM", ("profile", "compose", "--llm", "qwen9"),
         ("llm='qwen9'", "unknown component")),
    Case("compose-projector-gap", "compose with a projector whose output != LLM width",
         ("profile", "compose", "--vision", "internvit-300m", "--llm", "qwen2.5-0.5b", "--projector", "proj.yaml", "--out", "o.yaml"),
         ("projector.output_size(1024) != llm.hidden_size(896)",),
         {"proj.yaml": "kind: projector\ninput_size: 1024\nhidden_size: 896\noutput_size: 1024\n"}),
    Case("compose-wrong-slot", "compose with an LLM as the vision tower", ("profile", "compose", "--vision", "qwen2.5-0.5b"),
         ("compose --vision", "vision='qwen2.5-0.5b'", "'llm' component", "needs kind='vision'")),
    Case("compose-malformed", "compose with a malformed component file", ("profile", "compose", "--llm", "l.yaml"),
         ("l.yaml", "malformed YAML"), {"l.yaml": "kind: llm\nnum_layers: [2\n"}),
    Case("compose-nothing", "compose with no parts", ("profile", "compose"), ("give at least one of --vision, --llm, --sam2",)),
    Case("compose-out-directory", "compose --out a directory", ("profile", "compose", "--llm", "qwen2.5-0.5b", "--out", "outdir"),
         ("--out=outdir", "is a directory"), {"outdir": DIR}),
    # ---- probe (fails before anything is built)
    Case("probe-bad-plan", "probe with a malformed plan", ("probe", "--plan", "p.yaml"), ("p.yaml", "malformed YAML"),
         {"p.yaml": "engine: [\n"}),
    Case("probe-steps-zero", "probe --steps 0", ("probe", "--steps", "0"), ("--steps=0", "at least 1")),
    Case("probe-gpus-zero", "probe --gpus 0", ("probe", "--gpus", "0"), ("hardware.num_gpus=0", "greater than 0")),
    Case("probe-vram-cap", "probe --vram-cap -1", ("probe", "--vram-cap", "-1"), ("--vram-cap=-1", "positive")),
    Case("probe-timeout", "probe --timeout 0", ("probe", "--timeout", "0"), ("--timeout=0", "positive")),
    Case("probe-fake-world-ddp", "probe --fake-world on plain PyTorch", ("probe", "--engine", "pytorch", "--fake-world", "4"),
         ("--fake-world=4", "needs engine.kind=fsdp2 or deepspeed")),
    Case("probe-fake-world-gpus", "probe --fake-world with a different --gpus",
         ("probe", "--engine", "fsdp2", "--fake-world", "8", "--gpus", "2"),
         ("--fake-world=8", "hardware.num_gpus=2", "must equal it")),
    # ---- compare and search (memplan/cli/compare_cmd.py, search_cmd.py)
    Case("compare-malformed-plan", "compare a malformed plan", ("compare", "p.yaml", "--out", "reports"),
         ("p.yaml", "malformed YAML"), {"p.yaml": "engine: [\n"}),
    Case("compare-unknown-plan", "compare an unknown plan name", ("compare", "plan-z", "--out", "reports"),
         ("plan='plan-z'", "known plans")),
    Case("compare-unknown-gpu", "compare on an unknown GPU", ("compare", "--gpu", "rtx-9090", "--out", "reports"),
         ("gpu='rtx-9090'", "closest: rtx-4090")),
    Case("compare-foreign-calibration", "compare with a foreign calibration", ("compare", "--calibration", "c.yaml", "--out", "reports"),
         ("schema='x/1'", "expected 'memplan.calibration/1'"), {"c.yaml": "schema: x/1\n"}),
    Case("compare-out-is-a-file", "compare --out an existing file", ("compare", "--out", "taken"),
         ("--out", "taken"), {"taken": "x"}),
    Case("search-bad-plan", "search from a PyTorch plan with a ZeRO stage", ("search", "--gpus", "2", "--vram", "24", "--plan", "p.yaml"),
         ("engine.zero_stage=2", "needs engine.kind=deepspeed"), {"p.yaml": "engine: {kind: pytorch, zero_stage: 2}\n"}),
    Case("search-unknown-model", "search an unknown model", ("search", "--gpus", "2", "--vram", "24", "-m", "sa2va-4c"),
         ("model='sa2va-4c'", "closest: sa2va-4b")),
    Case("search-no-vram", "search without --vram or --gpu", ("search", "--gpus", "2"), ("--vram", "--gpu")),
    Case("search-vram-negative", "search --vram -3", ("search", "--gpus", "2", "--vram", "-3"), ("--vram=-3.0", "(0, 4096)")),
    Case("search-vram-inf", "search --vram inf", ("search", "--gpus", "2", "--vram", "inf"), ("--vram", "inf")),
    Case("search-host-ram-nan", "search --host-ram nan", ("search", "--gpus", "2", "--vram", "24", "--host-ram", "nan"),
         ("--host-ram", "nan")),
    # ---- DeepSpeed configs: emitting and checking them
    Case("emit-for-pytorch", "estimate --emit-deepspeed for a plain PyTorch plan",
         (E, "--engine", "pytorch", "--emit-deepspeed", "ds.json"), ("--emit-deepspeed", "engine.kind=pytorch")),
    Case("emit-for-inference", "estimate --emit-deepspeed for an inference plan",
         (E, "--mode", "inference", "--emit-deepspeed", "ds.json"), ("--emit-deepspeed", "mode=inference")),
    Case("probe-config-missing", "probe --deepspeed-config a missing file",
         ("probe", "--model", "t.yaml", "--lora-rank", "8", "--text-len", "256", "--tiles", "2", "--res", "256",
          "--objects", "2", "--device", "cpu", "--deepspeed-config", "nope.json"), ("nope.json", "file not found"),
         {"t.yaml": TINY_PROFILE}),
    Case("probe-config-disagrees", "probe --deepspeed-config whose ZeRO stage is not the plan's",
         ("probe", "--model", "t.yaml", "--lora-rank", "8", "--text-len", "256", "--tiles", "2", "--res", "256",
          "--objects", "2", "--zero", "2", "--device", "cpu", "--deepspeed-config", "ds.json"),
         ("--deepspeed-config=ds.json", "zero_optimization.stage is 3 but the plan gives 2"),
         {"t.yaml": TINY_PROFILE, "ds.json": json.dumps({"train_micro_batch_size_per_gpu": 1,
                                                         "zero_optimization": {"stage": 3}})}),
    Case("host-ram-huge", "a plan with host_ram_gib 1e308", (E, "--plan", "p.yaml"),
         ("hardware.host_ram_gib", "1e+308"), {"p.yaml": "hardware: {host_ram_gib: 1.0e+308}\n"}),
    # ---- flag and argument parsing (typer/click usage errors)
    Case("flag-type", "--gpus two", (E, "--gpus", "two"), ("'--gpus'", "valid integer"), usage=True),
    Case("flag-choice", "--offload some", (E, "--offload", "some"), ("'--offload'", "'some' is not one of"), usage=True),
    Case("profiles-format", "profiles --format xml", ("profiles", "--format", "xml"),
         ("'--format'", "'xml' is not one of 'table', 'json', 'md'"), usage=True),
    Case("validate-no-args", "validate without record files", ("validate",), ("Missing argument",), usage=True),
    Case("unknown-option", "an option that does not exist", (E, "--gpu-count", "2"), ("No such option: --gpu-count",),
         usage=True),
    Case("search-gpus-zero", "search --gpus 0", ("search", "--gpus", "0", "--vram", "24"), ("'--gpus'", "greater than or equal to 1"),
         usage=True),
]


def materialize(files: dict[str, Content], root: Path) -> None:
    for name, content in files.items():
        path = root / name
        if content is DIR:
            path.mkdir(parents=True, exist_ok=True)
            continue
        if callable(content):
            content = content()
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@contextlib.contextmanager
def working_directory(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_case(case: Case, root: Path) -> Outcome:
    """Write the case's files under ``root`` and run its command there (CliRunner, no subprocess)."""
    from typer.testing import CliRunner

    from memplan.cli.main import app
    from memplan.spec.loading import load_profile

    load_profile.cache_clear()  # relative names are reused across cases
    root.mkdir(parents=True, exist_ok=True)
    materialize(case.files, root)
    with working_directory(root):
        result = CliRunner().invoke(app, list(case.args), prog_name="memplan")
    return Outcome(result.exit_code, result.output, result.exception)


def app_has_one_line_usage_errors() -> bool:
    """Whether the app's top-level group turns usage errors into one `error:` line (options.OneLineErrors)."""
    import typer.main

    from memplan.cli.main import app
    from memplan.cli.options import OneLineErrors

    return isinstance(typer.main.get_command(app), OneLineErrors)


def problems(case: Case, outcome: Outcome) -> list[str]:
    """What is wrong with an outcome (empty: the case behaves)."""
    out = []
    if outcome.exit_code != 2:
        out.append(f"exit code {outcome.exit_code}, expected 2 ({outcome.exception!r})")
    if "Traceback" in outcome.output:
        out.append("a traceback was printed")
    if len(outcome.lines) != 1 or not outcome.lines[0].startswith("error: "):
        out.append(f"expected one line starting 'error: ', got {len(outcome.lines)}: {outcome.output[:300]!r}")
    for needle in case.needles:
        if needle not in outcome.output:
            out.append(f"message lacks {needle!r}")
    return out

RUNSET_HEAD = "schema: memplan.runset/1\nbatch: b\ncard: h200\n"
PREDICTION = json.dumps({"schema": "memplan.prediction/1", "run_key": "b/a", "predicted": {}})
CASES += [
    # ---- cards as CUDA sees them (memplan/spec/cards.py)
    Case("gpu-vram-above-card", "estimate --gpu rtx-3090 --vram 80", (E, "--gpu", "rtx-3090", "--vram", "80"),
         ("hardware.vram_gib=80", "rtx-3090's 24 GiB", "23.70 GiB")),
    Case("gpu-unknown", "estimate on an unknown --gpu", (E, "--gpu", "rtx-9090"), ("gpu='rtx-9090'", "closest: rtx-4090")),
    Case("probe-vram-cap-card", "probe --vram-cap naming no card", ("probe", "--vram-cap", "rtx-9090"),
         ("--vram-cap=rtx-9090", "closest: rtx-4090")),
    # ---- the protocol: predict and score (memplan/cli/protocol_cmd.py)
    Case("predict-missing", "predict a run set that does not exist", ("predict", "r.yaml", "--out", "p.jsonl"),
         ("r.yaml", "file not found")),
    Case("predict-schema", "predict a file of another schema", ("predict", "r.yaml", "--out", "p.jsonl"),
         ("schema='x/1'", "memplan.runset/1"), {"r.yaml": "schema: x/1\n"}),
    Case("predict-unknown-flag", "a planned run with an unknown flag", ("predict", "r.yaml", "--out", "p.jsonl"),
         ("runs.0.flags", "unknown flag 'gpu_count'", "allowed: res"),
         {"r.yaml": RUNSET_HEAD + "runs:\n  - {name: a, flags: {gpu_count: 2}}\n"}),
    Case("predict-duplicate-run", "two planned runs with one name", ("predict", "r.yaml", "--out", "p.jsonl"),
         ("name 'a' appears twice",), {"r.yaml": RUNSET_HEAD + "runs:\n  - {name: a}\n  - {name: a}\n"}),
    Case("predict-unknown-card", "a run set on an unknown card", ("predict", "r.yaml", "--out", "p.jsonl"),
         ("card='h300'", "closest: h200"), {"r.yaml": "schema: memplan.runset/1\nbatch: b\ncard: h300\nruns: [{name: a}]\n"}),
    Case("predict-bad-cap", "a planned run capped at an unknown card", ("predict", "r.yaml", "--out", "p.jsonl"),
         ("runs.a", "--vram-cap=rtx-9090"), {"r.yaml": RUNSET_HEAD + "runs:\n  - {name: a, vram_cap: rtx-9090}\n"}),
    Case("predict-out-exists", "predict onto existing predictions", ("predict", "r.yaml", "--out", "p.jsonl"),
         ("--out=p.jsonl", "exists", "--force"), {"r.yaml": RUNSET_HEAD + "runs:\n  - {name: a}\n", "p.jsonl": "x\n"}),
    Case("score-not-json", "score a predictions file that is not JSON lines", ("score", "p.jsonl", "r.jsonl"),
         ("p.jsonl:1", "not a JSON line"), {"p.jsonl": "xx\n"}),
    Case("score-schema", "score a file of another schema", ("score", "p.jsonl", "r.jsonl"),
         ("p.jsonl:1", "memplan.prediction/1"), {"p.jsonl": '{"a": 1}\n'}),
    Case("score-records-missing", "score against a records file that does not exist", ("score", "p.jsonl", "r.jsonl"),
         ("r.jsonl", "file not found"), {"p.jsonl": PREDICTION + "\n"}),
    Case("calibrate-no-calibration-side", "calibrate on records none of which is on the calibration side",
         ("calibrate", "r.jsonl", "--out", "c.yaml"), ("none of the 1 records is on the calibration side", "--all-sides"),
         {"r.jsonl": jsonl(record())}),
    Case("validate-side", "validate --side sideways", ("validate", "r.jsonl", "--side", "sideways"),
         ("--side='sideways'", "calibration, held-out"), {"r.jsonl": record_with()}),
    # ---- flags of the training stacks, multi-node, FSDP2 and cost
    Case("stack-unknown", "estimate --stack megatron", (E, "--stack", "megatron"),
         ("stack.kind='megatron'", "'sa2va', 'hf-trainer', 'accelerate' or 'custom-loop'")),
    Case("probe-stack-unknown", "probe --stack megatron", ("probe", "--stack", "megatron"),
         ("stack.kind='megatron'", "'sa2va', 'hf-trainer', 'accelerate' or 'custom-loop'")),
    Case("attention-unknown", "estimate --attention fast", (E, "--attention", "fast"),
         ("attention='fast'", "'eager', 'sdpa' or 'flash'")),
    Case("probe-attention-unknown", "probe --attention fast", ("probe", "--attention", "fast"),
         ("attention='fast'", "'eager', 'sdpa' or 'flash'")),
    Case("allocator-unknown", "estimate --allocator cuda", (E, "--allocator", "cuda"),
         ("allocator='cuda'", "'default' or 'expandable_segments'")),
    Case("probe-allocator-unknown", "probe --allocator cuda", ("probe", "--allocator", "cuda"),
         ("allocator='cuda'", "'default' or 'expandable_segments'")),
    Case("adapter-dtype-unknown", "estimate --adapter-dtype fp8", (E, "--adapter-dtype", "fp8"),
         ("stack.adapter_dtype='fp8'", "'compute' or 'fp32'")),
    Case("probe-adapter-dtype-unknown", "probe --adapter-dtype fp8", ("probe", "--adapter-dtype", "fp8"),
         ("stack.adapter_dtype='fp8'", "'compute' or 'fp32'")),
    Case("nodes-zero", "estimate --nodes 0", (E, "--nodes", "0"), ("'--nodes'", "greater than or equal to 1"),
         usage=True),
    Case("probe-nodes-negative", "probe --nodes -2", ("probe", "--nodes", "-2"),
         ("'--nodes'", "greater than or equal to 1"), usage=True),
    Case("probe-fake-world-zero", "probe --fake-world 0", ("probe", "--engine", "fsdp2", "--fake-world", "0"),
         ("'--fake-world'", "greater than or equal to 1"), usage=True),
    Case("probe-fake-world-huge", "probe --fake-world 100000", ("probe", "--engine", "fsdp2", "--fake-world", "100000"),
         ("'--fake-world'", "less than or equal to 65536"), usage=True),
    Case("emit-fsdp-for-deepspeed", "estimate --emit-fsdp for a DeepSpeed plan", (E, "--emit-fsdp", "f.yaml"),
         ("--emit-fsdp", "engine.kind=deepspeed", "needs engine.kind=fsdp2")),
    Case("emit-fsdp-for-inference", "estimate --emit-fsdp for an inference plan",
         (E, "--engine", "fsdp2", "--mode", "inference", "--emit-fsdp", "f.yaml"),
         ("--emit-fsdp", "mode=inference", "mode=train")),
    Case("emit-fsdp-exists", "estimate --emit-fsdp onto an existing path, without --force",
         (E, "--engine", "fsdp2", "--emit-fsdp", "f.yaml"), ("--emit-fsdp=f.yaml", "exists", "--force"),
         {"f.yaml": "keep: me\n"}),
    Case("dataset-samples-zero", "estimate --dataset-samples 0", (E, "--dataset-samples", "0"),
         ("'--dataset-samples'", "greater than or equal to 1"), usage=True),
    Case("compare-price-inf", "compare --price inf", ("compare", "sa2va-official", "plan-c", "--price", "inf"),
         ("'--price'", "--price=inf: must be a finite price per GPU-hour"), usage=True),
    Case("compare-dataset-samples-zero", "compare --dataset-samples 0",
         ("compare", "sa2va-official", "plan-c", "--dataset-samples", "0"),
         ("'--dataset-samples'", "greater than or equal to 1"), usage=True),
    Case("compare-price-negative", "compare --price -1", ("compare", "sa2va-official", "plan-c", "--price", "-1"),
         ("'--price'", "greater than or equal to 0"), usage=True),
    Case("search-dataset-samples-zero", "search --dataset-samples 0",
         ("search", "--gpus", "2", "--vram", "24", "--dataset-samples", "0"),
         ("'--dataset-samples'", "greater than or equal to 1"), usage=True),
    Case("search-price-negative", "search --price -1", ("search", "--gpus", "2", "--vram", "24", "--price", "-1"),
         ("'--price'", "greater than or equal to 0"), usage=True),
    Case("search-price-nan", "search --price nan", ("search", "--gpus", "2", "--vram", "24", "--price", "nan"),
         ("'--price'", "greater than or equal to 0"), usage=True),
    # ---- allocation traces: probe --trace-out and replay
    Case("probe-trace-out-cpu", "probe --trace-out on the CPU stand-in",
         ("probe", "-m", "qwen2.5-0.5b", "--device", "cpu", "--trace-out", "t.json.gz"),
         ("--trace-out=t.json.gz", "one CUDA device")),
    Case("replay-missing", "replay of a trace that does not exist", ("replay", "t.json.gz"),
         ("trace=t.json.gz", "no such file")),
    Case("replay-not-gzip", "replay of a file that is not a trace", ("replay", "t.json.gz"),
         ("trace=t.json.gz", "not a gzip-compressed JSON trace"), {"t.json.gz": "plain text"}),
    Case("replay-card-unknown", "replay --card naming no card", ("replay", "t.json.gz", "--card", "rtx-9090"),
         ("--vram-cap=rtx-9090", "closest: rtx-4090"), {"t.json.gz": lambda: _trace_bytes()}),
    Case("replay-alloc-conf", "replay --alloc-conf with an option it does not replay",
         ("replay", "t.json.gz", "--alloc-conf", "garbage_collection_threshold:0.6"),
         ("--alloc-conf=garbage_collection_threshold:0.6", "max_split_size_mb:N"), {"t.json.gz": lambda: _trace_bytes()}),
    Case("replay-text-len-one-trace", "replay --text-len with one trace",
         ("replay", "t.json.gz", "--text-len", "8192"), ("--text-len=8192", "two or more traces"),
         {"t.json.gz": lambda: _trace_bytes()}),
    Case("replay-two-without-text-len", "replay of two traces without --text-len", ("replay", "t.json.gz", "u.json.gz"),
         ("trace: 2 traces given without --text-len",), {"t.json.gz": lambda: _trace_bytes(), "u.json.gz": lambda: _trace_bytes()}),
    Case("replay-family-one-length", "replay --text-len of two traces at one length",
         ("replay", "t.json.gz", "u.json.gz", "--text-len", "8192"), ("traces: all at 4096 tokens",),
         {"t.json.gz": lambda: _trace_bytes(), "u.json.gz": lambda: _trace_bytes()}),
    Case("replay-longest-one-trace", "replay --longest with one trace", ("replay", "t.json.gz", "--longest"),
         ("--longest", "two or more traces"), {"t.json.gz": lambda: _trace_bytes()}),
    Case("replay-longest-and-text-len", "replay --longest with --text-len",
         ("replay", "t.json.gz", "u.json.gz", "--longest", "--text-len", "8192"), ("--text-len=8192", "not both"),
         {"t.json.gz": lambda: _trace_bytes(), "u.json.gz": lambda: _trace_bytes()}),
]


def _trace_bytes() -> bytes:
    """A one-request memplan.trace/1 file."""
    import gzip

    return gzip.compress(json.dumps({"schema": "memplan.trace/1", "plan": {"inputs": {"text_tokens": 4096}}, "events": {
        "kind": "a", "block": [0], "size": [4096], "stream": [0]}}).encode())

TRAIN_PY = "from transformers import Trainer\nTrainer(model=m).train()\n"
CASES += [
    # ---- memplan scan SCRIPT (memplan/cli/scan_cmd.py, memplan/integrations/script_scan.py)
    Case("scan-missing", "scan a script that does not exist", ("scan", "train.py"), ("SCRIPT=train.py", "file not found")),
    Case("scan-directory", "scan a directory", ("scan", "train.py"), ("SCRIPT=train.py", "is a directory"),
         {"train.py": DIR}),
    Case("scan-syntax-error", "scan a file that is not Python", ("scan", "train.py"),
         ("SCRIPT=train.py", "not Python at line 1"), {"train.py": "def train(:\n    pass\n"}),
    Case("scan-yaml-broken", "scan a YAML file that does not parse", ("scan", "plan.yaml"),
         ("SCRIPT=plan.yaml", "not YAML at line"),
         {"plan.yaml": "stack: {kind: hf-trainer}\nengine:\n  - zero\n   stage: 2\n"}),
    Case("scan-yaml-not-llamafactory", "scan a memplan plan YAML (not a training config)", ("scan", "plan.yaml"),
         ("SCRIPT=plan.yaml", "not a LLaMA-Factory training config"),
         {"plan.yaml": "stack: {kind: hf-trainer}\nengine: {zero_stage: 2}\n"}),
    Case("scan-not-utf8", "scan a script with Latin-1 bytes", ("scan", "train.py"),
         ("SCRIPT=train.py", "not UTF-8", "0xe9"), {"train.py": b"# caf\xe9\nimport torch\n"}),
    Case("scan-out-exists", "scan --out onto an existing file, without --force", ("scan", "train.py", "--out", "p.yaml"),
         ("--out=p.yaml", "exists", "--force"), {"train.py": TRAIN_PY, "p.yaml": "keep: me\n"}),
    Case("scan-out-directory", "scan --out a directory", ("scan", "train.py", "--out", "plans"),
         ("--out=plans", "is a directory"), {"train.py": TRAIN_PY, "plans": DIR}),
    Case("scan-base-plan-unknown", "scan --plan with a misspelt base plan", ("scan", "train.py", "--plan", "sa2va-oficial",
         "--out", "p.yaml"), ("plan='sa2va-oficial'", "closest: sa2va-official"), {"train.py": TRAIN_PY}),
    Case("scan-lora-rank-out-of-range", "scan --out a script whose LoraConfig rank is out of range",
         ("scan", "train.py", "--out", "p.yaml"),
         ("the plan scanned from train.py", "components.llm.lora.rank=100000", "less than or equal to 4096"),
         {"train.py": "from peft import LoraConfig, get_peft_model\nm = get_peft_model(m, LoraConfig(r=100000))\n"
                      "m(**b).loss.backward()\n"}),
    Case("scan-format-unknown", "scan --format xml", ("scan", "train.py", "--format", "xml"),
         ("'--format'", "'xml' is not one of"), {"train.py": TRAIN_PY}, usage=True),
]
