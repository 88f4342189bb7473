"""The rules for peft, embeddings, input-grad hooks, kept outputs, the loss, the optimizer and the batch."""

from __future__ import annotations

import ast
from typing import Any

from memplan.integrations.script_scan.reader import (
    EIGHT_BIT_OPTIMS, MISSING, NOT_LITERAL, PEFT_DEFAULTS, TRAINER_ARGS, TRAINER_CLASSES, Finding, ScriptTree,
    call_name, keyword_findings, lora_numbers, make_finding, partial, receiver_chain,
)
from memplan.integrations.script_scan.trl import loss_default
from memplan.spec.allocator import allocator_of


def _modules(value: Any) -> tuple[tuple[str, ...], list[str]]:
    """peft modules_to_save names as memplan's (embed_tokens, lm_head), and the ones it does not model."""
    names = value if isinstance(value, list) else [value]
    kept: list[str] = []
    other = []
    for name in names:
        if not isinstance(name, str):
            other.append(repr(name))
        elif "embed" in name or name == "wte":
            kept.append("embed_tokens")
        elif name in ("lm_head", "output", "embed_out"):
            kept.append("lm_head")
        else:
            other.append(name)
    return tuple(dict.fromkeys(kept)), other


UNSLOTH_MODELS = ("FastLanguageModel", "FastVisionModel", "FastModel")
UNSLOTH_DEFAULTS = {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0}  # the signature defaults of Unsloth's FastLlamaModel.get_peft_model


def _unsloth_call(call: ast.Call) -> bool:
    """FastLanguageModel.get_peft_model(...) and kin: Unsloth's own wrapper, not peft's function."""
    return isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and \
        call.func.value.id in UNSLOTH_MODELS


def _unsloth_peft(script: ScriptTree, call: ast.Call) -> Finding:
    """Unsloth's get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, use_gradient_checkpointing=...):
    LoRA with those values (Unsloth's defaults r=16, alpha=16, dropout 0 where not given)."""
    keywords = script.keywords(call)
    numbers, shown, notes = lora_numbers(script, keywords, defaults=UNSLOTH_DEFAULTS, source="Unsloth")
    settings: dict[str, Any] = {"components.llm.train": "lora", "components.llm.modules_to_save": [], **numbers}
    checkpointing = keywords.get("use_gradient_checkpointing")
    if checkpointing is not None:
        value = script.value(checkpointing)[0]
        if value in (True, "unsloth"):
            settings["components.llm.checkpointing"] = True
            if value == "unsloth":
                notes.append("use_gradient_checkpointing='unsloth' offloads the checkpointed inputs to the CPU: "
                             "not modelled (the estimate keeps them on the GPU)")
        elif value is False:
            settings["components.llm.checkpointing"] = False
    return make_finding(script, name=f"{call.func.value.id}.get_peft_model", value=", ".join(shown), node=call,
                        settings=settings, note="; ".join(notes) or "Unsloth's LoRA wrapper")


def read_unsloth(script: ScriptTree) -> list[Finding]:
    """Unsloth patches the model's kernels (a fused cross-entropy, its own attention and RoPE, checkpointing
    with CPU offload): none of it is modelled, so the estimate is the plain transformers stack's."""
    calls = [c for c, _ in script.reader.calls if isinstance(c.func, ast.Attribute)
             and isinstance(c.func.value, ast.Name) and c.func.value.id in UNSLOTH_MODELS]
    if not calls:
        return []
    return [make_finding(script, name="unsloth", value="not modelled", node=calls[0], gated=False,
                         note="Unsloth's patched kernels are not modelled: the estimate is for the same training on plain "
                              "transformers, so expect Unsloth to need less")]


def read_peft(script: ScriptTree, *, internvl: tuple[Finding, ...] = ()) -> tuple[list[Finding], set[str]]:
    """LoraConfig, get_peft_model and its autocast_adapter_dtype; no peft at all (or only under tests that do not
    hold): the model trains fully. Also the embeddings the LoRA config saves as copies (for the in-place rule)."""
    out: list[Finding] = []
    copies: set[str] = set()
    configs = script.calls_named("LoraConfig")
    wrappers = script.calls_named("get_peft_model")
    peft_kw = [c for c, _ in script.reader.calls if "peft_config" in script.keywords(c)
               and call_name(c) in TRAINER_CLASSES]
    for call in configs:
        keywords = script.keywords(call)
        numbers, shown, notes = lora_numbers(script, keywords, defaults=PEFT_DEFAULTS, source="peft")
        settings: dict[str, Any] = {"components.llm.train": "lora", **numbers}
        targets = keywords.get("target_modules")
        if targets is not None:
            value, _ = script.value(targets)
            shown.append(f"target_modules={value!r}" if value is not MISSING else "target_modules=?")
            if value not in ("all-linear", MISSING):
                notes.append("target_modules: memplan wraps every linear of the decoder layers")
        saved = keywords.get("modules_to_save")
        if saved is None:
            settings["components.llm.modules_to_save"] = []
        else:
            value, _ = script.value(saved)
            if value is MISSING:
                notes.append(f"modules_to_save: {NOT_LITERAL}")
            else:
                kept, other = _modules(value)
                settings["components.llm.modules_to_save"] = list(kept)
                copies |= set(kept)
                shown.append(f"modules_to_save={value!r}")
                if kept:
                    settings["stack.embeddings_training"] = "copies"
                if other:
                    notes.append(f"modules_to_save {', '.join(other)}: not modelled")
        out.append(make_finding(script, name="LoraConfig", value=", ".join(shown) or "defaults", node=call,
                            settings=settings, note="; ".join(notes)))
    for call in wrappers:
        if _unsloth_call(call):
            out.append(_unsloth_peft(script, call))
            continue
        node = script.keywords(call).get("autocast_adapter_dtype")
        value, via = script.value(node) if node is not None else (True, "")
        if value is MISSING:
            out.append(make_finding(script, name="get_peft_model", value=ast.unparse(node)[:40], node=call,
                                settings={"components.llm.train": "lora"}, note=f"autocast_adapter_dtype: {NOT_LITERAL}"))
            continue
        dtype = "fp32" if value else "compute"
        note = ("autocast_adapter_dtype=True (peft's default): fp32 adapters" if value
                else "autocast_adapter_dtype=False: adapters in the weights' dtype")
        out.append(make_finding(script, name="get_peft_model", value=f"adapters {dtype}", node=call,
                            settings={"components.llm.train": "lora", "stack.adapter_dtype": dtype}, note=note + via))
    for call in peft_kw:
        node = script.keywords(call)["peft_config"]
        if partial(node) is None:  # peft_config=None: no adapters
            continue
        if isinstance(node, ast.Call) and call_name(node) == "get_peft_config":
            out.append(make_finding(script, name="peft_config=", value="from the command line", node=call,
                                    note="trl.get_peft_config returns a LoraConfig only with --use_peft (else None: "
                                         "full fine-tuning); the base plan's LLM training is kept"))
            continue
        out.append(make_finding(script, name="peft_config=", value="adapters fp32", node=call,
                            settings={"components.llm.train": "lora", "stack.adapter_dtype": "fp32"},
                            note=f"{call_name(call)} calls get_peft_model with peft's defaults"))
    llm_wrappers = [f for f in internvl if f.name == "wrap_llm_lora"]
    if not any(f.status != "not taken" for f in (*out, *llm_wrappers)) and script.calls_named(
            *TRAINER_CLASSES, "backward", "Accelerator"):
        skipped = " (those seen are not taken with the defaults)" if out or llm_wrappers else ""
        out.append(Finding(name="peft", value="none", line=0, snippet="",
                           settings=(("components.llm.train", "full"), ("components.llm.lora", None),
                                     ("components.llm.modules_to_save", [])),
                           note=f"no LoraConfig/get_peft_model{skipped}: the LLM trains fully unless frozen (a custom "
                                "model class's freezing is not read)"))
    return out, copies


def _requires_grad_target(chain: list[str]) -> str | None:
    names = set(chain)
    if names & {"get_input_embeddings()", "embed_tokens", "wte", "embed_in"}:
        return "embed_tokens"
    if names & {"get_output_embeddings()", "lm_head", "embed_out"}:
        return "lm_head"
    return None


def read_embeddings(script: ScriptTree, *, copies: set[str], lora: bool) -> list[Finding]:
    """Embeddings or lm_head trained in place: ``.requires_grad_(True)`` or ``.weight.requires_grad = True``."""
    hits: list[tuple[str, ast.AST]] = []
    for call in script.calls_named("requires_grad_"):
        value = partial(call.args[0]) if call.args else True
        if value is True and isinstance(call.func, ast.Attribute):
            target = _requires_grad_target(receiver_chain(call.func.value))
            if target:
                hits.append((target, call))
    for target_node, value_node, _ in script.reader.attr_assigns:
        if target_node.attr == "requires_grad" and partial(value_node) is True:
            target = _requires_grad_target(receiver_chain(target_node.value))
            if target:
                hits.append((target, target_node))
    out = []
    names = sorted({t for t, _ in hits} | copies)
    for target, node in hits:
        if not lora:
            out.append(make_finding(script, name="trained in place", value=target, node=node,
                                note="no LoRA: the whole LLM trains already"))
            continue
        out.append(make_finding(script, name="trained in place", value=target, node=node,
                            settings={"stack.embeddings_training": "in_place",
                                      "components.llm.modules_to_save": names},
                            note="the base weights train (no peft copy)"))
    return out


def read_input_grads(script: ScriptTree, *, stack: str | None, checkpointing: bool) -> list[Finding]:
    out = []
    for call, scope in [(c, s) for c, s in script.reader.calls if call_name(c) == "enable_input_require_grads"]:
        settings = {} if checkpointing else {"stack.input_grad_hooks": "all_towers"}
        out.append(make_finding(script, name="enable_input_require_grads", value="on", node=call, settings=settings,
                            note="transformers 5: every tower's input embeddings; 4.x: the top model's"))
    forward_hooks = [c for c in script.calls_named("register_forward_hook")
                     if isinstance(c.func, ast.Attribute) and _requires_grad_target(receiver_chain(c.func.value)) == "embed_tokens"]
    for call, scope in [(c, s) for c, s in script.reader.calls if call_name(c) == "disable_input_require_grads"]:
        value = "llm" if forward_hooks else "none"
        in_callback = "on_train_begin" in scope
        if stack == "hf-trainer" and checkpointing and not in_callback:
            out.append(make_finding(script, name="disable_input_require_grads", value="does not hold", node=call,
                                note="Trainer.train turns checkpointing on again and re-hooks every tower; do it in a "
                                     "TrainerCallback.on_train_begin (docs/stacks.md)"))
            continue
        out.append(make_finding(script, name="disable_input_require_grads", value=value, node=call,
                            settings={"stack.input_grad_hooks": value},
                            note="then a forward hook on the LLM's embeddings" if forward_hooks else ""))
    return out


def _loss_source(script: ScriptTree, call: ast.Call) -> ast.AST | None:
    """The loss expression a backward call differentiates: ``X.backward()`` -> X, ``accelerator.backward(X)`` -> X."""
    if call.args and isinstance(call.func, ast.Attribute) and receiver_chain(call.func.value)[-1:] != ["loss"]:
        return call.args[0]
    return call.func.value if isinstance(call.func, ast.Attribute) else None


def _assignment_before(script: ScriptTree, *, name: str, line: int) -> tuple[ast.AST, int] | None:
    candidates = [(value, at) for n, value, at, _ in script.reader.assigns if n == name and at <= line]
    return max(candidates, key=lambda c: c[1]) if candidates else None


def read_outputs(script: ScriptTree, stack: str | None) -> list[Finding]:
    """``out = model(...)`` then ``out.loss.backward()`` keeps the outputs; ``loss = model(...).loss`` does not."""
    if stack not in ("accelerate", "custom-loop"):
        return []
    for call in script.calls_named("backward"):
        expr = _loss_source(script, call)
        if isinstance(expr, ast.Call) and call_name(expr) == "scale" and expr.args:  # GradScaler: scaler.scale(loss)
            expr = expr.args[0]
        if expr is None:
            continue
        if isinstance(expr, ast.Name):  # loss = ...; loss.backward()
            found = _assignment_before(script, name=expr.id, line=call.lineno)
            if found is None:
                continue
            expr = found[0]
        holder = None
        if isinstance(expr, (ast.Attribute, ast.Subscript)):
            inner = expr.value
            if isinstance(inner, ast.Call):
                return [make_finding(script, name="outputs kept", value="no", node=call,
                                 settings={"stack.keeps_outputs": False},
                                 note=f"{ast.unparse(expr)[:50]}: the output is dropped at once")]
            if isinstance(inner, ast.Name):
                holder = inner.id
        elif isinstance(expr, ast.Call):  # criterion(out.logits, labels)
            for arg in expr.args:
                if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
                    holder = arg.value.id
                    break
        if holder is None:
            continue
        assigned = _assignment_before(script, name=holder, line=call.lineno)
        if assigned is None or not isinstance(assigned[0], ast.Call):
            continue
        deleted = any(n == holder and assigned[1] < at < call.lineno for n, at, _ in script.reader.deletes)
        if deleted:
            return [make_finding(script, name="outputs kept", value="no", node=call, settings={"stack.keeps_outputs": False},
                             note=f"del {holder} before the backward")]
        return [make_finding(script, name="outputs kept", value="yes", node=call, settings={"stack.keeps_outputs": True},
                         note=f"{holder} = ... (line {assigned[1]}) is alive through backward, the step and the next "
                              "forward")]
    return []


def read_loss(script: ScriptTree) -> list[Finding]:
    out = []
    for call, _ in script.reader.calls:
        name = call_name(call)
        if name.startswith("apply_liger_kernel") or name in ("LigerFusedLinearCrossEntropyLoss",):
            fused = script.keywords(call).get("fused_linear_cross_entropy")
            value = partial(fused) if fused is not None else True
            settings = {"stack.loss": "chunked"} if value is True else {}
            out.append(make_finding(script, name=name, value="chunked" if value is True else "full vocabulary", node=call,
                                settings=settings, note="Liger's fused linear cross-entropy"
                                if value is True else "fused_linear_cross_entropy is off"))
        elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and \
                call.func.value.id == "AutoLigerKernelForCausalLM":
            out.append(make_finding(script, name="AutoLigerKernelForCausalLM", value="chunked", node=call,
                                settings={"stack.loss": "chunked"}))

    def read(value, node):
        return repr(value), ({"stack.loss": "chunked"} if value is True else {}), ""

    out += keyword_findings(script, keyword="use_liger_kernel", calls=script.calls_named(*TRAINER_ARGS), read=read)
    return out + loss_default(script)


ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"


def _alloc_conf_settings(script: ScriptTree) -> list[tuple[ast.AST, ast.AST]]:
    """(node, value) where the script sets PyTorch's allocator: ``os.environ["PYTORCH_CUDA_ALLOC_CONF"] = v``,
    ``os.environ.setdefault(...)``/``os.putenv(...)`` with that name, ``torch.cuda.memory._set_allocator_settings(v)``."""
    found: list[tuple[ast.AST, ast.AST]] = []
    for node in ast.walk(script.tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and partial(target.slice) == ALLOC_CONF:
                    found.append((node, node.value))
        elif isinstance(node, ast.Call):
            name = call_name(node)
            if name in ("setdefault", "putenv") and len(node.args) == 2 and partial(node.args[0]) == ALLOC_CONF:
                found.append((node, node.args[1]))
            elif name == "_set_allocator_settings" and node.args:
                found.append((node, node.args[0]))
    return found


def read_allocator(script: ScriptTree) -> list[Finding]:
    """The caching allocator the script sets for itself: expandable segments or not
    (memplan.spec.allocator.allocator_of). The variable counts only before CUDA is first used."""
    out = []
    for node, value_node in _alloc_conf_settings(script):
        value, via = script.value(value_node)
        if not isinstance(value, str):
            out.append(make_finding(script, name=ALLOC_CONF, value=ast.unparse(value_node)[:60], node=node, note=NOT_LITERAL))
            continue
        allocator = allocator_of(value)
        out.append(make_finding(script, name=ALLOC_CONF, value=value, node=node,
                                settings={"stack.allocator": allocator},
                                note=("expandable segments: no fragmentation margin; set before CUDA is first used"
                                      if allocator != "default" else "the default allocator") + via))
    return out


def read_optimizer(script: ScriptTree, stack: str | None) -> list[Finding]:
    def read(value, node):
        if value in ("adamw_torch_fused",):
            return value, {"stack.fused_optimizer": True, "optimizer.kind": "adamw"}, ""
        if value in ("adamw_torch", "adamw_hf"):
            return value, {"stack.fused_optimizer": False, "optimizer.kind": "adamw"}, "foreach AdamW"
        if value in EIGHT_BIT_OPTIMS:
            return value, {"optimizer.kind": "adam8bit"}, ""
        if value == "sgd":
            return value, {"optimizer.kind": "sgd"}, ""
        return repr(value), {}, "not an optimizer memplan models: assumed AdamW"

    out = keyword_findings(script, keyword="optim", calls=script.calls_named(*TRAINER_ARGS), read=read)
    if stack in ("hf-trainer", "accelerate", "custom-loop"):
        for call in script.calls_named("AdamW", "Adam", "AdamW8bit", "PagedAdamW8bit", "SGD"):
            name = call_name(call)
            settings: dict[str, Any] = {"optimizer.kind": {"AdamW8bit": "adam8bit", "PagedAdamW8bit": "adam8bit",
                                                           "SGD": "sgd"}.get(name, "adamw")}
            fused = script.keywords(call).get("fused")
            value = partial(fused) if fused is not None else False
            if name in ("AdamW", "Adam"):
                settings["stack.fused_optimizer"] = value is True
            note = "fused=True" if value is True else ("fused: " + NOT_LITERAL if value is MISSING else "foreach")
            out.append(make_finding(script, name=name, value=settings["optimizer.kind"], node=call, settings=settings,
                                note=note if name in ("AdamW", "Adam") else ""))
    return out


def read_batch(script: ScriptTree) -> list[Finding]:
    def read(value, node):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return str(value), {"inputs.micro_batch": value}, ""
        return repr(value), {}, "expected a positive integer"

    return keyword_findings(script, keyword="per_device_train_batch_size", calls=script.calls_named(*TRAINER_ARGS),
                             read=read)
