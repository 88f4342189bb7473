"""The rules for what a script does to one component: checkpointing flags and private calls, InternVL's
LoRA wrappers, freezing helpers; and TrainingArguments parsed from the command line."""

from __future__ import annotations

import ast
from typing import Any

from memplan.integrations.script_scan.reader import (
    MISSING, NOT_LITERAL, TRAINER_ARGS, Finding, ScriptTree, call_name, make_finding, partial, receiver_chain,
)

VISION = {"vision_model", "vision_tower", "visual", "vit", "vision_encoder", "image_encoder", "vision"}
LLM = {"language_model", "llm", "lm", "text_model"}
PROJECTOR = {"mlp1", "mlp", "projector", "multi_modal_projector", "mm_projector", "merger", "connector"}
WRAPPER_DEFAULTS = {"r": 128, "lora_alpha": 256, "lora_dropout": 0.05}  # InternVL's wrap_*_lora signatures
# transformers' HfArgumentParser and TRL's TrlParser (trl/scripts/utils.py, parse_args_and_config): the
# training arguments come from the command line (and a --config YAML)
PARSERS = ("HfArgumentParser", "parse_args_into_dataclasses", "TrlParser", "parse_args_and_config")


def component_of(chain: list[str], *, strict: bool = False) -> str | None:
    """'vision' | 'llm' | 'projector' | 'model' (the receiver is one name) | None, from a receiver chain
    (innermost last); ``strict``: the chain must end at the component itself (not at one of its parts)."""
    if len(chain) <= 1:
        return "model" if chain else None
    names = {chain[0]} if strict else set(chain)
    for component, known in (("vision", VISION), ("llm", LLM), ("projector", PROJECTOR)):
        if names & known:
            return component
    return None


def command_line_arguments(script: ScriptTree) -> Finding | None:
    """HfArgumentParser / parse_args_into_dataclasses with no TrainingArguments(...) given literal keywords:
    deepspeed=, bf16, gradient_checkpointing and the batch come from the launch command."""
    literal = [c for c in script.calls_named(*TRAINER_ARGS) if c.keywords]
    parsers = script.calls_named(*PARSERS)
    if literal or not parsers:
        return None
    call = parsers[0]
    return make_finding(script, name="TrainingArguments", value="from the command line", node=call, gated=False,
                        note=f"{call_name(call)}, line {call.lineno}: deepspeed / bf16 / gradient_checkpointing / "
                             "per_device_train_batch_size not read; the base plan's are kept")


def _enabled(script: ScriptTree, call: ast.Call) -> Any:
    """_set_gradient_checkpointing(True) / (enable=False) / (module, value=True) / (): True by default."""
    keywords = script.keywords(call)
    for name in ("enable", "value"):
        if name in keywords:
            return script.value(keywords[name])[0]
    for arg in call.args:
        value = partial(arg)
        if isinstance(value, bool):
            return value
    return True


def _checkpoint_settings(component: str | None, on: bool, *, private: bool) -> tuple[dict[str, Any], str]:
    if component == "vision":
        return {"components.vision.checkpointing": on}, "the vision tower's own flag: the LLM's is not turned on"
    if component == "llm":
        return ({"components.llm.checkpointing": on} | ({"stack.checkpoint_scope": "components"} if on else {}),
                "on the language model only")
    if component == "model":
        scope = {"stack.checkpoint_scope": "model"} if on and private else {}
        return ({"components.llm.checkpointing": on} | scope,
                "every module's flag (the vision tower's too)" if private else "the top model's own flag")
    return {}, "which component this is not known: pass components.<x>.checkpointing yourself"


def read_checkpoint_flags(script: ScriptTree) -> list[Finding]:
    """``X.gradient_checkpointing = True`` and ``X._set_gradient_checkpointing(...)`` (InternVL-style)."""
    out = []
    for target, value_node, _ in script.reader.attr_assigns:
        if target.attr != "gradient_checkpointing":
            continue
        value = script.value(value_node)[0]
        component = component_of(receiver_chain(target.value))
        if not isinstance(value, bool):
            out.append(make_finding(script, name=_named(component), value=ast.unparse(value_node)[:40], node=target,
                                    note=NOT_LITERAL))
            continue
        settings, note = _checkpoint_settings(component, value, private=False)
        out.append(make_finding(script, name=_named(component), value="on" if value else "off", node=target,
                                settings=settings, note=note))
    for call in script.calls_named("_set_gradient_checkpointing"):
        chain = receiver_chain(call.func.value) if isinstance(call.func, ast.Attribute) else []
        component, value = component_of(chain), _enabled(script, call)
        if not isinstance(value, bool):
            out.append(make_finding(script, name="_set_gradient_checkpointing", value="?", node=call, note=NOT_LITERAL))
            continue
        settings, note = _checkpoint_settings(component, value, private=True)
        out.append(make_finding(script, name="_set_gradient_checkpointing" + (" (vision)" if component == "vision"
                                else ""), value="on" if value else "off", node=call, settings=settings, note=note))
    return out


def _named(component: str | None) -> str:
    return "gradient_checkpointing (vision)" if component == "vision" else ".gradient_checkpointing ="


def read_lora_wrappers(script: ScriptTree) -> list[Finding]:
    """InternVL's ``model.wrap_llm_lora(r=, lora_alpha=)`` / ``wrap_backbone_lora``: get_peft_model inside,
    with peft's defaults (fp32 adapters)."""
    out = []
    for call in script.calls_named("wrap_llm_lora", "wrap_backbone_lora"):
        part = "llm" if call_name(call) == "wrap_llm_lora" else "vision"
        keywords = script.keywords(call)
        settings: dict[str, Any] = {f"components.{part}.train": "lora"}
        shown, notes = [], []
        for index, (keyword, target) in enumerate((("r", "rank"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"))):
            node = keywords.get(keyword, call.args[index] if len(call.args) > index else None)
            value, via = script.value(node) if node is not None else (WRAPPER_DEFAULTS[keyword], " (the wrapper's default)")
            if value is MISSING or isinstance(value, bool) or not isinstance(value, (int, float)):
                notes.append(f"{keyword}={ast.unparse(node)[:30]}: {NOT_LITERAL}")
                continue
            if value < 0 or (value == 0 and target != "dropout"):
                notes.append(f"{keyword}={value}{via}: not a usable LoRA {target}, not applied")
                continue
            settings[f"components.{part}.lora.{target}"] = float(value) if target == "dropout" else int(value)
            shown.append(f"{keyword}={value}")
            notes += [f"{keyword}{via}"] if via else []
        notes.append("get_peft_model inside with peft's defaults: fp32 adapters")
        if part == "llm":
            settings |= {"stack.adapter_dtype": "fp32", "components.llm.modules_to_save": []}
            notes.append("its enable_input_require_grads on the LLM is not read")
        out.append(make_finding(script, name=call_name(call), value=", ".join(shown) or "defaults", node=call,
                                settings=settings, note="; ".join(notes)))
    return out


def _freezes(loop: ast.For) -> bool:
    """``for p in X.parameters(): p.requires_grad = False`` (or ``for n, p in X.named_parameters()``)."""
    names = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
    for node in ast.walk(loop):
        if isinstance(node, ast.Assign) and partial(node.value) is False:
            for target in node.targets:
                if (isinstance(target, ast.Attribute) and target.attr == "requires_grad"
                        and isinstance(target.value, ast.Name) and target.value.id in names):
                    return True
    return False


def _frozen_receivers(script: ScriptTree) -> list[tuple[ast.AST, ast.AST, str]]:
    """(receiver expression, node to report, how) for every freezing: helper calls, loops, requires_grad_(False)."""
    helpers: set[str] = set()
    hits: list[tuple[ast.AST, ast.AST, str]] = []
    for loop in script.reader.fors:
        it = loop.iter
        if not (isinstance(it, ast.Call) and call_name(it) in ("parameters", "named_parameters")
                and isinstance(it.func, ast.Attribute) and _freezes(loop)):
            continue
        owner = next((f for f in script.reader.functions.values() if loop in ast.walk(f)
                      and isinstance(it.func.value, ast.Name)
                      and it.func.value.id in [a.arg for a in f.args.args]), None)
        if owner is not None:
            helpers.add(owner.name)
        else:
            hits.append((it.func.value, loop, "requires_grad = False over its parameters"))
    for call in script.calls_named(*helpers):
        if call.args and isinstance(call.func, ast.Name):
            hits.append((call.args[0], call, f"{call.func.id}(...): sets requires_grad = False on every parameter"))
    for call in script.calls_named("requires_grad_"):
        if call.args and partial(call.args[0]) is False and isinstance(call.func, ast.Attribute):
            hits.append((call.func.value, call, "requires_grad_(False)"))
    return hits


FROZEN = {"llm": {"components.llm.train": "frozen", "components.llm.lora": None, "components.llm.modules_to_save": []},
          "vision": {"components.vision.train": "frozen", "components.vision.lora": None},
          "projector": {"components.projector.train": "frozen"}}


def read_freezing(script: ScriptTree) -> list[Finding]:
    """Freezing a vision / LLM / projector receiver: components.<x>.train: frozen."""
    out = []
    for receiver, node, how in _frozen_receivers(script):
        component = component_of(receiver_chain(receiver), strict=True)
        settings = FROZEN.get(component or "", {})
        what = "the whole model: not mapped (a part is usually unfrozen after)" if component == "model" else (
            "not a component memplan names")
        note = how if settings else f"{how}; {ast.unparse(receiver)[:40]}: {what}"
        out.append(make_finding(script, name="frozen", value=component if settings else ast.unparse(receiver)[:40],
                                node=node, settings=settings, note=note))
    return out
