"""The rules for the stack, the engine, checkpointing, attention and precision."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from memplan.integrations.script_scan.reader import (
    ATTENTION, LOADERS, MISSING, NOT_LITERAL, TORCH_DTYPES, TRAINER_ARGS, TRAINER_CLASSES, Finding,
    ScriptTree, call_name, dotted_name, keyword_findings, make_finding, receiver_chain,
)
from memplan.integrations.script_scan.trl import bf16_default
from memplan.spec.errors import printable


def read_stack(script: ScriptTree) -> list[Finding]:
    trainers = script.calls_named(*TRAINER_CLASSES)
    accelerators = script.calls_named("Accelerator")
    backwards = script.calls_named("backward")
    if trainers:
        call = trainers[0]
        return [make_finding(script, name="stack", value="hf-trainer", node=call, settings={"stack.kind": "hf-trainer"},
                         note=f"transformers {call_name(call)}", gated=False)]
    if accelerators:
        via = [c for c in backwards if c.args and isinstance(c.func, ast.Attribute)]
        note = "Accelerator(...) with accelerator.backward(loss)" if via else "Accelerator(...) (no accelerator.backward seen)"
        return [make_finding(script, name="stack", value="accelerate", node=accelerators[0],
                         settings={"stack.kind": "accelerate"}, note=note, gated=False)]
    if backwards:
        return [make_finding(script, name="stack", value="custom-loop", node=backwards[0],
                         settings={"stack.kind": "custom-loop"}, note="a hand-written loop: .backward() without Trainer",
                         gated=False)]
    arguments = script.calls_named(*TRAINER_ARGS)
    if arguments:
        return [make_finding(script, name="stack", value="hf-trainer", node=arguments[0],
                         settings={"stack.kind": "hf-trainer"}, note="TrainingArguments without a Trainer call seen",
                         gated=False)]
    return []


def engine_of_config(config: dict[str, Any], *, where: str) -> tuple[dict[str, Any], str, str]:
    """The plan's engine for a DeepSpeed config dict (memplan.spec.inherit.plan_from_deepspeed: ZeRO stage and
    offload devices), the value a finding shows, and a note when the stage is not given (DeepSpeed's default,
    0); ValueError when it is not a DeepSpeed config. Shared by a script's ``deepspeed=`` and LLaMA-Factory's
    ``deepspeed:`` key."""
    from memplan.spec.inherit import plan_from_deepspeed

    engine = plan_from_deepspeed(config, where, ValueError)["engine"]
    zero = config.get("zero_optimization")
    stage = zero.get("stage") if isinstance(zero, dict) else None
    note = "" if stage not in (None, "auto") else "zero_optimization.stage not given: DeepSpeed's default, 0"
    shown = (f"ZeRO-{engine['zero_stage']}, offload optimizer {engine['offload_optimizer']}, "
             f"params {engine['offload_params']}")
    return engine, shown, note


def read_engine(script: ScriptTree, stack: str | None) -> list[Finding]:
    """deepspeed= (a JSON path beside the script, or a dict): stage and offload devices; none: plain PyTorch."""
    out: list[Finding] = []
    for call in [c for c, _ in script.reader.calls]:
        node = script.keywords(call).get("deepspeed")
        if node is None or call_name(call) in ("DeepSpeedPlugin",):
            continue
        value, via = script.value(node)
        config, where = None, "the dict literal"
        if isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() or script.folder is None else script.folder / value
            where = value
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                out.append(make_finding(script, name="deepspeed", value=value, node=node,
                                    note=f"{printable(path)} not found: ZeRO stage not read, assumed the base plan's"))
                continue
            except (OSError, ValueError) as error:
                out.append(make_finding(script, name="deepspeed", value=value, node=node,
                                    note=f"{printable(path)} unreadable ({str(error).splitlines()[0][:60]}): not read"))
                continue
        elif isinstance(value, dict):
            config = value
        if not isinstance(config, dict):
            out.append(make_finding(script, name="deepspeed", value=ast.unparse(node)[:60], node=node, note=NOT_LITERAL))
            continue
        try:
            engine, shown, note = engine_of_config(_without_missing(config), where=where)
        except ValueError as error:
            out.append(make_finding(script, name="deepspeed", value=where, node=node, note=f"not read: {error}"))
            continue
        out.append(make_finding(script, name="deepspeed", value=shown, node=node,
                            settings={"engine": engine}, note=(f"{where}; {note}" if note else where) + via))
    if not out and stack in ("hf-trainer", "accelerate", "custom-loop"):
        note = "no deepspeed= argument: plain PyTorch (DDP)"
        if stack == "accelerate":
            note += "; an accelerate config file's DeepSpeed or FSDP is not read"
        out.append(Finding(name="engine", value="pytorch", line=0, snippet="",
                           settings=(("engine", {"kind": "pytorch", "zero_stage": 0}),), note=note))
    return out


def _without_missing(config: Any) -> Any:
    """A partly literal DeepSpeed dict with its non-literal parts as "auto" (not given)."""
    if isinstance(config, dict):
        return {k: _without_missing(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_without_missing(v) for v in config]
    return "auto" if config is MISSING else config


def read_checkpointing(script: ScriptTree) -> list[Finding]:
    out = []

    def flag(value, node):
        if not isinstance(value, bool):
            return repr(value), {}, "expected True or False"
        return repr(value), {"components.llm.checkpointing": value}, ""

    for keyword in ("gradient_checkpointing", "activation_checkpointing"):
        out += keyword_findings(script, keyword=keyword, calls=[c for c, _ in script.reader.calls], read=flag)
    for call in script.calls_named("gradient_checkpointing_enable", "activation_checkpointing_enable"):
        receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
        chain = receiver_chain(receiver) if receiver is not None else []
        whole = len(chain) <= 1 or chain[0] in ("model", "base_model")
        scope = "model" if whole else "components"
        note = ("on the top model: every GradientCheckpointingLayer (the vision tower's too)" if whole
                else f"on {'.'.join(reversed(chain))} only")
        out.append(make_finding(script, name=call_name(call), value="on", node=call,
                            settings={"components.llm.checkpointing": True, "stack.checkpoint_scope": scope}, note=note))
    for call in script.calls_named("gradient_checkpointing_disable"):
        out.append(make_finding(script, name="gradient_checkpointing_disable", value="off", node=call,
                            settings={"components.llm.checkpointing": False}))
    return out


def read_attention(script: ScriptTree) -> list[Finding]:
    def read(value, node):
        if value in ATTENTION:
            return value, {"attention": ATTENTION[value]}, ""
        return repr(value), {}, "not an implementation memplan models (eager, sdpa, flash): assumed the base plan's"

    out = keyword_findings(script, keyword="attn_implementation", calls=[c for c, _ in script.reader.calls], read=read)
    for call in script.calls_named("set_attn_implementation"):
        if call.args:
            value, _ = script.value(call.args[0])
            shown, settings, note = read(value, call) if value is not MISSING else (ast.unparse(call.args[0]), {}, NOT_LITERAL)
            out.append(make_finding(script, name="set_attn_implementation", value=shown, node=call, settings=settings,
                                note=note))
    return out


def _dtype_of(script: ScriptTree, node: ast.AST) -> tuple[str | None, str]:
    """'bf16' | 'fp16' | 'fp32' | None for a dtype expression (torch.bfloat16, "bfloat16", "auto"), and a note."""
    name = dotted_name(node)
    if name.startswith("torch."):
        return TORCH_DTYPES.get(name.removeprefix("torch.")), ""
    value, via = script.value(node)
    if value == "auto":
        return None, "the checkpoint's own dtype (config.json): assumed the base plan's"
    if isinstance(value, str) and value in TORCH_DTYPES:
        return TORCH_DTYPES[value], via
    return None, NOT_LITERAL


def read_precision(script: ScriptTree, stack: str | None, *, command_line: bool = False) -> list[Finding]:
    """Weights dtype and mixed precision; with TrainingArguments from the command line bf16/fp16 are not read."""
    out: list[Finding] = []
    weights: str | None = None
    for call in script.calls_named(*LOADERS):
        for keyword in ("torch_dtype", "dtype"):
            node = script.keywords(call).get(keyword)
            if node is None:
                continue
            dtype, note = _dtype_of(script, node)
            weights = dtype or weights
            out.append(make_finding(script, name=f"{keyword} (weights)", value=dtype or ast.unparse(node)[:40], node=node,
                                note=note))
    for call in script.calls_named("bfloat16", "half"):
        if isinstance(call.func, ast.Attribute) and not call.args:
            weights = "bf16" if call_name(call) == "bfloat16" else "fp16"
            out.append(make_finding(script, name=f".{call_name(call)}() (weights)", value=weights, node=call))
    mixed: str | None = None
    mixed_given = False
    arguments = script.calls_named(*TRAINER_ARGS)
    for call in arguments:
        for keyword, dtype in (("bf16", "bf16"), ("fp16", "fp16")):
            node = script.keywords(call).get(keyword)
            if node is None:
                continue
            value, via = script.value(node)
            if value is MISSING:
                out.append(make_finding(script, name=keyword, value=ast.unparse(node)[:40], node=node, note=NOT_LITERAL))
                mixed_given = True
                continue
            out.append(make_finding(script, name=keyword, value=repr(value), node=node, note=via.strip()))
            if value is True:
                mixed, mixed_given = dtype, True
    for finding in bf16_default(script):  # SFTConfig without bf16=/fp16=: TRL's own default
        out.append(finding)
        if finding.value == "True":
            mixed, mixed_given = "bf16", True
    for call in script.calls_named("Accelerator"):
        node = script.keywords(call).get("mixed_precision")
        if node is None:
            continue
        value, via = script.value(node)
        mixed_given = True
        if value in ("bf16", "fp16"):
            mixed = value
        out.append(make_finding(script, name="mixed_precision", value=repr(value) if value is not MISSING else
                            ast.unparse(node)[:40], node=node, note=NOT_LITERAL if value is MISSING else via.strip(),
                            settings={"stack.autocast": False} if value == "no" else {}))
    for item in script.reader.withs:
        expr = item.context_expr
        if isinstance(expr, ast.Call) and call_name(expr) in ("autocast",):
            dtype_node = script.keywords(expr).get("dtype")
            dtype = _dtype_of(script, dtype_node)[0] if dtype_node is not None else "bf16"
            mixed, mixed_given = dtype or mixed, True
            out.append(make_finding(script, name="torch.autocast", value=dtype or "?", node=expr,
                                settings={"stack.autocast": True}))
    if stack in (None, "sa2va") or (weights is None and mixed is None):
        if stack == "hf-trainer" and arguments and not mixed_given and not any(script.has_splat(c) for c in arguments):
            out.append(Finding(name="bf16/fp16", value="not set", line=0, snippet="",
                               settings=(("stack.autocast", False),), note="Trainer without bf16=True runs no autocast"))
        return out
    if command_line and mixed is None and weights not in ("bf16", "fp16"):
        out.append(Finding(name="precision", value="not read", line=0, snippet="", note="bf16/fp16 from the "
                           "command line, weights not 16-bit: precision not read, assumed the base plan's"))
        return out
    compute = mixed or (weights if weights in ("bf16", "fp16") else "fp32")
    fp32_weights = weights == "fp32" and compute != "fp32"
    settings = {"precision.compute": compute, "precision.weights_fp32": fp32_weights,
                "precision.master_weights": fp32_weights, "precision.llm_fp32_upcast": False}
    if stack == "hf-trainer" and arguments and not mixed_given and not any(script.has_splat(c) for c in arguments):
        settings["stack.autocast"] = False
    note = ("fp32 weights under autocast (they are the master copy)" if fp32_weights
            else "weights and compute in " + compute)
    if weights is None:
        note += " (no dtype= at from_pretrained: transformers 5 loads the checkpoint's dtype, assumed " + compute + ")"
    out.append(Finding(name="precision", value=compute + (" autocast, fp32 weights" if fp32_weights else ""), line=0,
                       snippet="", settings=tuple(settings.items()), note=note + "; Trainer and accelerate keep no "
                       "other master copy"))
    return out


def read_kbit_prepare(script: ScriptTree) -> list[Finding]:
    """peft's prepare_model_for_kbit_training casts the 16-bit parameters to fp32: all of them on an unquantized
    model (precision.llm_fp32_upcast), the non-quantized ones (norms, embeddings, lm_head) on a k-bit one."""
    out = []
    quantized = bool(read_quantization(script))
    for call in script.calls_named(*KBIT_PREPARE):
        if quantized:
            out.append(make_finding(script, name=call_name(call), value="norms etc. to fp32", node=call,
                                note="on a k-bit model it casts the non-quantized parameters (norms, embeddings, "
                                     "lm_head) to fp32: not modelled"))
        else:
            out.append(make_finding(script, name=call_name(call), value="fp32 upcast", node=call,
                                settings={"precision.llm_fp32_upcast": True},
                                note="casts every 16-bit parameter to fp32 (peft prepare_model_for_kbit_training)"))
    return out


KBIT_PREPARE = ("prepare_model_for_kbit_training", "prepare_model_for_int8_training")  # the second: peft < 0.5


def read_quantization(script: ScriptTree) -> list[Finding]:
    """k-bit base weights (load_in_8bit / load_in_4bit, BitsAndBytesConfig): memplan does not model them."""
    out = []
    for keyword, bits in (("load_in_8bit", "8-bit"), ("load_in_4bit", "4-bit")):
        for call in [c for c, _ in script.reader.calls]:
            node = script.keywords(call).get(keyword)
            if node is not None and script.value(node)[0] is not False:
                out.append(make_finding(script, name=keyword, value=bits, node=node, note=QUANTIZED_NOTE))
    return out


QUANTIZED_NOTE = ("not modelled: memplan counts the frozen base weights at their 16-bit size, so its weights term is "
                  "high by about half (8-bit) or three quarters (4-bit) of them")


def read_kbit_checkpointing(script: ScriptTree) -> list[Finding]:
    """prepare_model_for_kbit_training(model) on a k-bit model turns gradient checkpointing on (its
    use_gradient_checkpointing defaults to True) and hooks the input embeddings (peft utils/other.py)."""
    if not read_quantization(script):
        return []
    out = []
    for call in script.calls_named(*KBIT_PREPARE):
        node = script.keywords(call).get("use_gradient_checkpointing")
        value = True if node is None else script.value(node)[0]
        if value is True:
            out.append(make_finding(script, name=call_name(call), value="checkpointing on", node=call,
                                settings={"components.llm.checkpointing": True},
                                note="use_gradient_checkpointing=True (its default) on a k-bit model"))
    return out


def read_compile(script: ScriptTree) -> list[Finding]:
    """torch.compile: its fused graphs save other tensors than eager PyTorch; not modelled."""
    return [make_finding(script, name="torch.compile", value="on", node=call,
                         note="not modelled: a compiled model usually saves fewer activations than the eager one "
                              "memplan estimates (an over-estimate)")
            for call in script.calls_named("compile") if dotted_name(call.func) in ("torch.compile", "compile")]
