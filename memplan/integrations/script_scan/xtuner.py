"""Sa2VA's own training configs: xtuner/mmengine config modules (magic-research/Sa2VA
projects/llava_sam2/configs/sa2va_*.py), read like a script (ast; nothing imported or run).

Such a config is module-level assignments: ``model = dict(type=VideoLLaVASAMModel..., mllm=dict(type=
InternVL_Slowfast, model_path=path, freeze_llm=True, freeze_visual_encoder=True, llm_lora=dict(type=
LoraConfig, r=128, ...)), grounding_encoder=dict(type=SAM2TrainRunner), frozen_sam2_decoder=False)``,
``batch_size = 2  # per_device``, ``max_length = 8192`` and ``extra_image_processor = dict(type=
DirectResize, target_length=1024)`` (SAM2's input side). xtuner trains it with Sa2VA's own wiring, the
plan's ``stack.kind: sa2va``; the DeepSpeed strategy comes from the launch (``--deepspeed
deepspeed_zero2``), so the base plan's engine is kept.
"""

from __future__ import annotations

import ast
from typing import Any

from memplan.integrations.script_scan.reader import (MISSING, NOT_LITERAL, PEFT_DEFAULTS, Finding, ScriptTree,
                                                     lora_numbers, make_finding)
from memplan.spec.aliases import sa2va_profile_for


def _dict_keywords(node: ast.AST | None) -> dict[str, ast.AST] | None:
    """The keywords of a ``dict(...)`` call (None for anything else)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return {k.arg: k.value for k in node.keywords if k.arg}
    return None


def _model_dict(script: ScriptTree) -> tuple[ast.AST, dict[str, ast.AST]] | None:
    """The module-level ``model = dict(...)`` of a Sa2VA config: one with ``mllm=`` and ``grounding_encoder=``."""
    for node in script.tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model" for t in node.targets):
            keywords = _dict_keywords(node.value)
            if keywords and "mllm" in keywords and "grounding_encoder" in keywords:
                return node, keywords
    return None


def is_sa2va_config(script: ScriptTree) -> bool:
    return _model_dict(script) is not None


def _flag(script: ScriptTree, keywords: dict[str, ast.AST], key: str) -> Any:
    node = keywords.get(key)
    return script.value(node)[0] if node is not None else MISSING


def _llm(script: ScriptTree, mllm: dict[str, ast.AST], at: ast.AST) -> list[Finding]:
    """freeze_llm and llm_lora: LoRA on a frozen LLM (rank, alpha, dropout), frozen, or fully trained."""
    lora = _dict_keywords(mllm.get("llm_lora"))
    freeze = _flag(script, mllm, "freeze_llm")
    if lora is not None:
        # llm_lora = dict(type=LoraConfig, ...): peft builds it, so a key not given takes peft's default
        numbers, shown, notes = lora_numbers(script, lora, defaults=PEFT_DEFAULTS, source="peft")
        settings: dict[str, Any] = {"components.llm.train": "lora", **numbers}
        return [make_finding(script, name="llm_lora", value=", ".join(shown) or "LoraConfig", node=mllm["llm_lora"],
                             settings=settings, note="; ".join(notes) or "LoRA on the LLM (Sa2VA wraps it with peft)")]
    if freeze is True:
        return [make_finding(script, name="freeze_llm", value="True", node=mllm["freeze_llm"],
                             settings={"components.llm.train": "frozen"}, note="no llm_lora: the LLM is frozen")]
    if freeze is False:
        return [make_finding(script, name="freeze_llm", value="False", node=mllm["freeze_llm"],
                             settings={"components.llm.train": "full"}, note="the LLM trains fully")]
    return [make_finding(script, name="freeze_llm", value="not read", node=at, note=f"{NOT_LITERAL}: the base plan's LLM training is kept")]


def _frozen(script: ScriptTree, keywords: dict[str, ast.AST], *, key: str, component: str) -> list[Finding]:
    if key not in keywords:
        return []
    value = _flag(script, keywords, key)
    if not isinstance(value, bool):
        return [make_finding(script, name=key, value=ast.unparse(keywords[key])[:40], node=keywords[key], note=NOT_LITERAL)]
    return [make_finding(script, name=key, value=str(value), node=keywords[key],
                         settings={f"components.{component}.train": "frozen" if value else "full"})]


def _module_constant(script: ScriptTree, name: str) -> tuple[Any, ast.AST] | None:
    for node in script.tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return script.value(node.value)[0], node
    return None


def _model_path(script: ScriptTree, mllm: dict[str, ast.AST]) -> list[Finding]:
    """mllm.model_path: the MLLM Sa2VA is built on, and the shipped Sa2VA profile on it (the plan's model)."""
    node = mllm.get("model_path")
    if node is None:
        return []
    value = script.value(node)[0]
    if not isinstance(value, str):
        return [make_finding(script, name="model_path", value=ast.unparse(node)[:40], node=node, note=NOT_LITERAL)]
    profile = sa2va_profile_for(value)
    if profile is None:
        return [make_finding(script, name="model_path", value=value, node=node,
                             note="no shipped Sa2VA profile on this MLLM: pass -m (memplan profiles)")]
    return [make_finding(script, name="model_path", value=value, node=node, settings={"model": profile},
                         note=f"Sa2VA on this MLLM: {profile}")]


def read_sa2va_config(script: ScriptTree) -> list[Finding]:
    """The findings of a Sa2VA xtuner config (empty for anything else)."""
    found = _model_dict(script)
    if found is None:
        return []
    node, model = found
    kind = ast.unparse(model["type"])[:40] if "type" in model else "model"
    out = [make_finding(script, name="stack", value="sa2va", node=node, settings={"stack.kind": "sa2va"}, gated=False,
                        note=f"Sa2VA's xtuner config ({kind}): Sa2VA's own training wiring"),
           make_finding(script, name="engine", value="from the launch", node=node, gated=False,
                        note="xtuner takes the DeepSpeed strategy on its command line (--deepspeed deepspeed_zero2): "
                             "the base plan's engine is kept")]
    mllm = _dict_keywords(model["mllm"]) or {}
    out += _model_path(script, mllm)
    out += _llm(script, mllm, model["mllm"])
    out += _frozen(script, mllm, key="freeze_visual_encoder", component="vision")
    out += _frozen(script, model, key="frozen_sam2_decoder", component="sam2_decoder")
    batch = _module_constant(script, "batch_size")
    if batch is not None:
        value, at = batch
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out.append(make_finding(script, name="batch_size", value=str(value), node=at,
                                    settings={"inputs.micro_batch": value}, note="xtuner's batch per device"))
    length = _module_constant(script, "max_length")
    if length is not None and isinstance(length[0], int):
        out.append(make_finding(script, name="max_length", value=str(length[0]), node=length[1],
                                note="a cap on a sample's tokens, not its length: inputs.text_tokens is the base "
                                     "plan's (--text-len sets it)"))
    processor = _module_constant(script, "extra_image_processor")
    keywords = _dict_keywords(processor[1].value) if processor is not None else None
    if keywords and "target_length" in keywords:
        side = script.value(keywords["target_length"])[0]
        if isinstance(side, int) and not isinstance(side, bool) and side > 0:
            out.append(make_finding(script, name="target_length", value=str(side), node=keywords["target_length"],
                                    settings={"inputs.sam2_resolution": side},
                                    note="DirectResize: SAM2's input side"))
    return out
