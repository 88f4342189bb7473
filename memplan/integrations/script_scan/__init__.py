"""Read a user's training script without running it: what it does to memory, as plan settings.

A static reader over Python's ``ast``: nothing is imported from the script, nothing in it executes,
and torch is never imported. It finds the training stack (transformers ``Trainer``, accelerate, a
hand-written loop, or Sa2VA's own xtuner config: xtuner.py) and the calls and keyword arguments that the plan's ``stack`` section and its
neighbours model (docs/stacks.md), each with its line and source. A value that is not a literal (a
variable assigned more than once, an argparse argument, a function call) is reported as such and
left at the base plan's default; so are custom model classes and anything decided at run time.
reader.py holds the findings and the tree reading, rules.py and training.py the rules.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from memplan.integrations.script_scan.components import (command_line_arguments, read_checkpoint_flags,
                                                         read_freezing, read_lora_wrappers)
from memplan.integrations.script_scan.reader import NOT_LITERAL, TRAINER_ARGS, Finding, Scan, ScriptTree
from memplan.integrations.script_scan.rules import (read_attention, read_checkpointing, read_compile, read_engine,
                                                    read_kbit_checkpointing, read_kbit_prepare, read_precision,
                                                    read_quantization,
                                                    read_stack)
from memplan.integrations.script_scan.training import (read_allocator, read_batch, read_embeddings, read_input_grads, read_loss,
                                                       read_optimizer, read_outputs, read_peft, read_unsloth)
from memplan.integrations.script_scan.trl import checkpointing_default
from memplan.integrations.script_scan.xtuner import is_sa2va_config, read_sa2va_config
from memplan.spec.errors import InputError, printable

__all__ = ["NOT_LITERAL", "Finding", "Scan", "plan_document_for", "scan_script", "scan_source"]


def scan_source(*, source: str, script: str = "<script>", folder: Path | None = None) -> Scan:
    """Scan a script's source text (``folder``: where relative paths such as a DeepSpeed JSON are read from).
    A syntax error is an InputError naming the script and the line."""
    try:
        tree = ast.parse(source, filename=script)
    except (SyntaxError, ValueError) as error:
        line = getattr(error, "lineno", None)
        at = f" at line {line}" if line else ""
        raise InputError(f"SCRIPT={script}: not Python{at}: {getattr(error, 'msg', None) or error}") from None
    except (RecursionError, MemoryError):
        raise InputError(f"SCRIPT={script}: nested too deeply to read (Python's parser gave up)") from None
    try:
        parsed = ScriptTree(source=source, tree=tree, folder=folder)
    except RecursionError:
        raise InputError(f"SCRIPT={script}: nested too deeply to read") from None
    if is_sa2va_config(parsed):  # Sa2VA's xtuner config: module-level dicts, no training loop to read
        findings = [*read_sa2va_config(parsed), *read_allocator(parsed)]
        return Scan.in_line_order(script=script, findings=findings)
    findings = read_stack(parsed)
    stack = findings[0].value if findings else None
    command_line = command_line_arguments(parsed) if stack is not None else None
    checkpointing = [*read_checkpointing(parsed), *read_kbit_checkpointing(parsed), *read_checkpoint_flags(parsed),
                     *checkpointing_default(parsed)]
    ckpt_on = any(dict(f.settings).get("components.llm.checkpointing") is True for f in checkpointing)
    if stack is not None:
        checkpointing += _checkpointing_default(parsed, checkpointing, command_line=command_line is not None)
    engine = read_engine(parsed, stack)
    if command_line is not None:
        engine = [f for f in engine if f.name != "engine"] + [command_line]  # no "plain PyTorch" from an absence
    wrappers = read_lora_wrappers(parsed)
    peft, copies = read_peft(parsed, internvl=tuple(wrappers))
    lora = any(dict(f.settings).get("components.llm.train") == "lora" for f in (*peft, *wrappers))
    findings += [*engine, *checkpointing, *read_attention(parsed),
                 *read_precision(parsed, stack, command_line=command_line is not None), *peft, *wrappers,
                 *read_embeddings(parsed, copies=copies, lora=lora),
                 *read_input_grads(parsed, stack=stack, checkpointing=ckpt_on), *read_outputs(parsed, stack),
                 *read_loss(parsed), *read_optimizer(parsed, stack), *read_batch(parsed), *read_freezing(parsed),
                 *read_kbit_prepare(parsed), *read_quantization(parsed), *read_compile(parsed), *read_allocator(parsed), *read_unsloth(parsed)]
    return Scan.in_line_order(script=script, findings=findings)


def _checkpointing_default(parsed: ScriptTree, found: list[Finding], *, command_line: bool) -> list[Finding]:
    """The LLM's checkpointing when nothing that holds with the defaults sets it: off (transformers' default),
    or not read (TrainingArguments(**...), the command line, a test not known statically)."""
    relevant = [f for f in found if not f.name.endswith("(vision)") and f.status != "not taken"]
    if relevant:
        return []
    splat = any(parsed.has_splat(c) for c in parsed.calls_named(*TRAINER_ARGS))
    if splat or command_line:
        why = "TrainingArguments(**...)" if splat else "TrainingArguments from the command line"
        return [Finding(name="gradient checkpointing", value="not read", line=0, snippet="",
                        note=f"{why}: gradient_checkpointing not read, assumed the base plan's")]
    skipped = " with the defaults" if any(not f.name.endswith("(vision)") for f in found) else ""
    return [Finding(name="gradient checkpointing", value="off", line=0, snippet="",
                    settings=(("components.llm.checkpointing", False),),
                    note=f"not switched on anywhere{skipped} (transformers' default: off)")]


def scan_script(*, path: str | Path) -> Scan:
    """Scan a script file; a path that is missing, a directory, unreadable, not UTF-8 or not Python is an InputError."""
    from memplan.spec.loading import read_file_bytes

    path = Path(path)
    name = printable(path)
    raw = read_file_bytes(path, name=f"SCRIPT={name}", expected="a Python training script or a LLaMA-Factory YAML")
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"SCRIPT={name}: not UTF-8 text (byte {error.start}: {error.object[error.start]:#04x})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _scan_yaml(source=source, script=name, folder=path.resolve().parent)
    return scan_source(source=source, script=name, folder=path.resolve().parent)


def _scan_yaml(*, source: str, script: str, folder: Path) -> Scan:
    """A YAML training config: LLaMA-Factory's (llamafactory.py); anything else is an InputError."""
    import yaml

    from memplan.integrations.script_scan.llamafactory import is_llamafactory, scan_llamafactory

    try:
        document = yaml.safe_load(source)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"SCRIPT={script}: not YAML{at}: {getattr(error, 'problem', None) or error}") from None
    if not is_llamafactory(document):
        raise InputError(f"SCRIPT={script}: not a LLaMA-Factory training config (no finetuning_type, stage or "
                         "model_name_or_path key); memplan scan reads Python scripts and LLaMA-Factory YAML")
    return scan_llamafactory(text=source, document=document, script=script, folder=folder)


def plan_document_for(*, scan: Scan, base: str | Path | None = None) -> dict[str, Any]:
    """A full plan document: the base plan (default: the one every command uses) with the scan's settings on top."""
    from memplan.spec.flags import DEFAULT_PLAN, plan_with_defaults, set_dotted
    from memplan.spec.loading import DEEPSPEED_ONLY, plan_document

    document = plan_with_defaults(plan_document(base or DEFAULT_PLAN))
    for dotted, value in scan.settings().items():
        if dotted == "engine":
            engine = dict(value)
            if engine.get("kind") == "pytorch":
                engine.update(offload_optimizer="none", offload_params="none")
            document["engine"] = engine
            if document.get("optimizer", {}).get("kind") in ("fused_adam", "cpu_adam") and (
                    engine.get("kind") != "deepspeed" or engine.get("offload_optimizer", "none") == "none"):
                document["optimizer"] = {**document["optimizer"], "kind": "adamw"}
            continue
        if value is None:
            *parents, leaf = dotted.split(".")
            node = document
            for part in parents:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(leaf, None)
            continue
        set_dotted(document, dotted, value)
    stem = Path(scan.script).stem or "script"
    document["name"] = f"scan-{stem}"
    document["description"] = f"memplan scan of {Path(scan.script).name} on {Path(str(base or DEFAULT_PLAN)).stem}"
    for key in DEEPSPEED_ONLY:
        if document["engine"].get("kind") == "pytorch":
            document["engine"].pop(key, None)
    return document
