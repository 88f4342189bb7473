"""LLaMA-Factory's training YAML (``llamafactory-cli train config.yaml``), read as plan settings.

The keys and defaults are LLaMA-Factory's (hiyouga/LLaMA-Factory src/llamafactory/hparams/:
finetuning_args.py, model_args.py; model/adapter.py for the fp32 upcast; model_utils/attention.py for
``flash_attn``). It trains with a subclass of transformers' Seq2SeqTrainer, so the stack is
``hf-trainer``. A key left out takes LLaMA-Factory's default, and the finding says so:
- ``finetuning_type`` lora (default), full, freeze or oft; ``lora_rank`` 8, ``lora_alpha`` 2 x rank,
  ``lora_dropout`` 0; ``additional_target`` embed_tokens / lm_head: copies trained beside the adapters;
- trainable parameters are upcast to fp32 unless ``pure_bf16`` (or DeepSpeed ZeRO-3, which keeps its own
  fp32 partitions): LoRA adapters in fp32, full fine-tuning with fp32 weights under bf16 autocast;
- ``disable_gradient_checkpointing`` False: checkpointing is on, on the whole model;
- ``freeze_vision_tower`` and ``freeze_multi_modal_projector`` True, ``freeze_language_model`` False;
- ``flash_attn`` auto (transformers' choice, SDPA), disabled (eager), sdpa, fa2/fa3 (flash);
- ``deepspeed``: a JSON path (its ZeRO stage and offload), ``enable_liger_kernel`` (a fused loss),
  ``per_device_train_batch_size``, ``bf16``/``fp16``; ``cutoff_len`` is a cap, not the length.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from memplan.integrations.script_scan.reader import Finding, Scan
from memplan.spec.errors import InputError, printable

KEYS = ("finetuning_type", "stage", "model_name_or_path")  # a document with one of them is such a config
ATTENTION = {"disabled": "eager", "sdpa": "sdpa", "fa2": "flash", "fa3": "flash"}


def is_llamafactory(document: Any) -> bool:
    return isinstance(document, dict) and any(key in document for key in KEYS)


class _Lines:
    """Where each top-level key is written (line and source), for the findings."""

    def __init__(self, text: str) -> None:
        self.text = text.splitlines()

    def at(self, key: str) -> tuple[int, str]:
        pattern = re.compile(rf"^{re.escape(key)}\s*:")
        for number, line in enumerate(self.text, start=1):
            if pattern.match(line):
                return number, line.strip()[:100]
        return 0, ""


def _finding(lines: _Lines, key: str, value: Any, *, settings: dict[str, Any] | None = None, note: str = "") -> Finding:
    line, snippet = lines.at(key)
    return Finding(name=key, value=str(value), line=line, snippet=snippet, settings=tuple((settings or {}).items()),
                   note=note if line else ("not set: LLaMA-Factory's default" + (f"; {note}" if note else "")))


def _deepspeed(value: Any, *, folder: Path | None) -> tuple[dict[str, Any] | None, str, str]:
    """The engine a DeepSpeed JSON path gives, the value shown and a note; searched beside the YAML and the
    folders above it (LLaMA-Factory's examples name paths from the repository root), then the current
    directory; read as a script's ``deepspeed=`` is (rules.engine_of_config)."""
    from memplan.integrations.script_scan.rules import engine_of_config

    if not isinstance(value, str):
        return None, str(value), "not a path: not read"
    path = Path(value)
    candidates = [path] if path.is_absolute() else [
        *[base / path for base in ([folder, *folder.parents][:4] if folder else [])], Path.cwd() / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return None, value, f"{value} not found beside the config: ZeRO stage not read, assumed the base plan's"
    try:
        config = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return None, value, f"{value} unreadable ({str(error).splitlines()[0][:60]}): not read"
    if not isinstance(config, dict):
        return None, value, f"{value}: not a DeepSpeed config (a JSON object): not read"
    try:
        engine, shown, note = engine_of_config(config, where=value)
    except ValueError as error:
        return None, value, f"{value}: not read: {error}"
    return engine, shown, printable(found) + (f"; {note}" if note else "")


def _training(document: dict[str, Any], lines: _Lines, *, deepspeed_stage: Any) -> list[Finding]:
    """finetuning_type with the LoRA values, and the fp32 upcast of the trainable parameters (adapter.py)."""
    kind = document.get("finetuning_type", "lora")
    pure = document.get("pure_bf16") is True
    upcast = not pure and deepspeed_stage != 3
    out: list[Finding] = []
    if kind == "lora":
        rank = document.get("lora_rank", 8)
        alpha = document.get("lora_alpha") or (2 * rank if isinstance(rank, int) else None)
        dropout = document.get("lora_dropout", 0.0)
        settings: dict[str, Any] = {"components.llm.train": "lora"}
        if isinstance(rank, int) and rank > 0:
            settings["components.llm.lora.rank"] = rank
        if isinstance(alpha, int) and alpha > 0:
            settings["components.llm.lora.alpha"] = alpha
        if isinstance(dropout, (int, float)) and not isinstance(dropout, bool):
            settings["components.llm.lora.dropout"] = float(dropout)
        extra = document.get("additional_target")
        saved = [m for m in ("embed_tokens", "lm_head") if isinstance(extra, str) and m in extra]
        settings["components.llm.modules_to_save"] = saved
        if deepspeed_stage is None:  # DeepSpeed's bf16 engine casts the module itself
            settings["stack.adapter_dtype"] = "fp32" if upcast else "compute"
        out.append(_finding(lines, "finetuning_type", kind, settings=settings,
                            note=f"lora_rank {rank}, lora_alpha {alpha}, lora_dropout {dropout}"
                                 + ("; adapters upcast to fp32 (LLaMA-Factory's adapter.py)" if upcast and deepspeed_stage is None else "")))
    elif kind == "full":
        settings = {"components.llm.train": "full"}
        if upcast and deepspeed_stage is None and document.get("bf16") is True:
            settings.update({"precision.weights_fp32": True, "precision.master_weights": True})
        out.append(_finding(lines, "finetuning_type", kind, settings=settings,
                            note="trainable weights upcast to fp32 under bf16 autocast" if "precision.weights_fp32" in settings else ""))
    else:
        out.append(_finding(lines, "finetuning_type", kind, note=f"{kind} tuning is not modelled: the base plan's LLM "
                            "training is kept"))
    return out


def _freezing(document: dict[str, Any], lines: _Lines) -> list[Finding]:
    out = []
    for key, component, default in (("freeze_vision_tower", "vision", True),
                                    ("freeze_multi_modal_projector", "projector", True)):
        value = document.get(key, default)
        if isinstance(value, bool):
            out.append(_finding(lines, key, value, settings={f"components.{component}.train": "frozen" if value else "full"}))
    if document.get("freeze_language_model") is True:
        out.append(_finding(lines, "freeze_language_model", True, settings={"components.llm.train": "frozen"}))
    return out


def _runtime(document: dict[str, Any], lines: _Lines) -> list[Finding]:
    """Checkpointing, attention, loss, batch, precision and what is not modelled."""
    out = []
    off = document.get("disable_gradient_checkpointing", False) is True
    out.append(_finding(lines, "disable_gradient_checkpointing", off,
                        settings={"components.llm.checkpointing": not off,
                                  **({} if off else {"stack.checkpoint_scope": "model"})},
                        note="checkpointing on the whole model" if not off else "checkpointing off"))
    attention = document.get("flash_attn", "auto")
    if attention in ATTENTION:
        out.append(_finding(lines, "flash_attn", attention, settings={"attention": ATTENTION[attention]}))
    elif attention == "auto":
        out.append(_finding(lines, "flash_attn", attention, settings={"attention": "sdpa"}, note="transformers' choice: SDPA"))
    if document.get("enable_liger_kernel") is True:
        out.append(_finding(lines, "enable_liger_kernel", True, settings={"stack.loss": "chunked"}, note="Liger's fused loss"))
    batch = document.get("per_device_train_batch_size", 8)  # transformers' TrainingArguments default
    if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
        out.append(_finding(lines, "per_device_train_batch_size", batch, settings={"inputs.micro_batch": batch}))
    mixed = "bf16" if document.get("bf16") is True or document.get("pure_bf16") is True else (
        "fp16" if document.get("fp16") is True else None)
    if mixed:
        out.append(_finding(lines, "bf16" if mixed == "bf16" else "fp16", True, settings={"precision.compute": mixed}))
    else:
        out.append(_finding(lines, "bf16", False, settings={"stack.autocast": False}, note="no bf16/fp16: no autocast"))
    if "cutoff_len" in document:
        out.append(_finding(lines, "cutoff_len", document["cutoff_len"], note="a cap on a sample's tokens, not its "
                            "length: inputs.text_tokens is the base plan's (--text-len sets it)"))
    for key, what in (("quantization_bit", "quantized base weights (QLoRA)"), ("use_unsloth", "Unsloth's kernels"),
                      ("use_unsloth_gc", "Unsloth's CPU-offloaded checkpointing"), ("use_galore", "GaLore"),
                      ("use_badam", "BAdam")):
        if document.get(key) not in (None, False):
            out.append(_finding(lines, key, document[key], note=f"{what}: not modelled"))
    return out


def _model(document: dict[str, Any], lines: _Lines) -> list[Finding]:
    from memplan.spec.aliases import profile_aliases

    name = document.get("model_name_or_path")
    if not isinstance(name, str):
        return []
    aliases = profile_aliases()
    profile = aliases.get(name.lower()) or aliases.get(name.rstrip("/").rsplit("/", 1)[-1].lower())
    if profile is None:
        return [_finding(lines, "model_name_or_path", name, note="no shipped profile by that name: pass -m")]
    return [_finding(lines, "model_name_or_path", name, settings={"model": profile}, note=f"profile {profile}")]


def scan_llamafactory(*, text: str, document: dict[str, Any], script: str, folder: Path | None) -> Scan:
    """The findings of a LLaMA-Factory training YAML."""
    lines = _Lines(text)
    if document.get("stage", "sft") not in ("sft", "pt"):
        raise InputError(f"SCRIPT={script}: stage={document.get('stage')!r}: only sft and pt are modelled "
                         "(reward models, PPO, DPO and KTO keep a second model or policy)")
    stack = Finding(name="stack", value="hf-trainer", line=0, snippet="", settings=(("stack.kind", "hf-trainer"),),
                    note="LLaMA-Factory trains with a subclass of transformers' Seq2SeqTrainer")
    findings = [stack, *_model(document, lines)]
    stage = None
    if "deepspeed" in document:
        engine, shown, note = _deepspeed(document["deepspeed"], folder=folder)
        if engine is not None:
            stage = engine.get("zero_stage")
            findings.append(_finding(lines, "deepspeed", shown, settings={"engine": engine}, note=note))
        else:
            stage = "not read"  # DeepSpeed all the same: its engine decides the adapters' dtype
            findings.append(_finding(lines, "deepspeed", shown, note=note))
    else:
        findings.append(Finding(name="engine", value="pytorch", line=0, snippet="",
                                settings=(("engine", {"kind": "pytorch", "zero_stage": 0}),),
                                note="no deepspeed: key: plain PyTorch (DDP)"))
    findings += [*_training(document, lines, deepspeed_stage=stage), *_freezing(document, lines),
                 *_runtime(document, lines)]
    return Scan.in_line_order(script=script, findings=findings)
