"""The scan's findings and its reading of the syntax tree: literals, names assigned once, calls,
assignments and deletions (memplan.integrations.script_scan)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


NOT_LITERAL = "not a literal, assumed default"
TRAINER_CLASSES = {"Trainer", "SFTTrainer", "Seq2SeqTrainer", "DPOTrainer", "ORPOTrainer", "KTOTrainer",
                   "RewardTrainer", "GRPOTrainer"}
TRAINER_ARGS = {"TrainingArguments", "Seq2SeqTrainingArguments", "SFTConfig", "DPOConfig", "ORPOConfig",
                "KTOConfig", "GRPOConfig", "RewardConfig"}
LOADERS = {"from_pretrained", "from_config", "_from_config"}
TORCH_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "half": "fp16", "fp16": "fp16",
                "float32": "fp32", "float": "fp32", "fp32": "fp32"}
ATTENTION = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash", "flash_attention_3": "flash",
             "flex_attention": "sdpa"}
EIGHT_BIT_OPTIMS = {"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "adamw_torch_8bit", "adam8bit"}
ARITHMETIC = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.FloorDiv: lambda a, b: a // b, ast.Div: lambda a, b: a / b}
PEFT_DEFAULTS = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0}  # peft LoraConfig's field defaults
LORA_KEYS = (("r", "rank"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"))  # keyword -> plan's lora field


class _Missing:
    def __repr__(self) -> str:
        return "<not a literal>"


MISSING = _Missing()


@dataclass(frozen=True)
class Finding:
    """One thing the script does: what, its value, where (line and source), and the plan settings it implies."""

    name: str
    value: str
    line: int
    snippet: str
    settings: tuple[tuple[str, Any], ...] = ()
    note: str = ""
    status: str = "always"  # under if tests: "taken", "not taken" or "unknown" (conditions.py)

    def to_dict(self) -> dict[str, Any]:
        return {"finding": self.name, "value": self.value, "line": self.line, "source": self.snippet,
                "settings": dict(self.settings), "note": self.note, "condition": self.status}


@dataclass(frozen=True)
class Scan:
    """Every finding of one script, in line order (line 0: a conclusion drawn from the whole file)."""

    script: str
    findings: tuple[Finding, ...]

    @classmethod
    def in_line_order(cls, *, script: str, findings: list[Finding]) -> "Scan":
        """The findings sorted by line, the whole-file conclusions (line 0) last."""
        return cls(script=script, findings=tuple(sorted(findings, key=lambda f: (f.line == 0, f.line))))

    @property
    def stack(self) -> str | None:
        return next((f.value for f in self.findings if f.name == "stack"), None)

    def settings(self) -> dict[str, Any]:
        """The dotted plan settings the findings imply; a later finding wins over an earlier one."""
        out: dict[str, Any] = {}
        for finding in sorted(self.findings, key=lambda f: (f.name != "stack", f.line)):
            out.update(dict(finding.settings))
        return out

    def fragment(self) -> dict[str, Any]:
        """The settings as a nested plan fragment (what the scan would write into a plan)."""
        from memplan.spec.flags import set_dotted

        tree: dict[str, Any] = {}
        for dotted, value in self.settings().items():
            set_dotted(tree, dotted, value)
        return tree

    def to_dict(self) -> dict[str, Any]:
        return {"script": self.script, "stack": self.stack, "findings": [f.to_dict() for f in self.findings],
                "fragment": self.fragment()}


# ------------------------------------------------------------------ reading the syntax tree

def partial(node: ast.AST) -> Any:
    """A literal's value; containers keep their literal parts and hold MISSING where a part is not one."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = partial(node.operand)
        return -inner if isinstance(node.op, ast.USub) and isinstance(inner, (int, float)) else inner
    if isinstance(node, ast.Dict):
        return {partial(k): partial(v) for k, v in zip(node.keys, node.values)
                if k is not None and isinstance(partial(k), (str, int))}
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [partial(item) for item in node.elts]
    return MISSING


def dotted_name(node: ast.AST) -> str:
    """``a.b.c`` for a name or attribute chain ('' when it holds a call or a subscript)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def call_name(call: ast.Call) -> str:
    """The called name's last part: ``Trainer`` for ``transformers.Trainer(...)``, ``backward`` for ``x.backward()``."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def receiver_chain(node: ast.AST) -> list[str]:
    """Every name, attribute and called name along an expression's receiver chain, innermost last."""
    out = []
    while True:
        if isinstance(node, ast.Attribute):
            out.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            out.append(call_name(node) + "()")
            node = node.func.value if isinstance(node.func, ast.Attribute) else node.func
            if isinstance(node, ast.Name):
                break
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Name):
            out.append(node.id)
            break
        else:
            break
    return out


@dataclass
class _Reader(ast.NodeVisitor):
    """One pass over the module: the calls, keywords, assignments and deletions that matter."""

    calls: list[tuple[ast.Call, tuple[str, ...]]] = field(default_factory=list)  # (call, enclosing functions)
    assigns: list[tuple[str, ast.AST, int, tuple[str, ...]]] = field(default_factory=list)  # (name, value, line, scope)
    attr_assigns: list[tuple[ast.Attribute, ast.AST, int]] = field(default_factory=list)
    deletes: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    withs: list[ast.withitem] = field(default_factory=list)
    params: list[tuple[str, ast.AST, int, str]] = field(default_factory=list)  # (name, default, line, function)
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    fors: list[ast.For] = field(default_factory=list)
    conditions: dict[int, tuple[tuple[ast.expr, bool], ...]] = field(default_factory=dict)  # id(node): if tests
    scope: tuple[str, ...] = ()
    tests: tuple[tuple[ast.expr, bool], ...] = ()

    def visit(self, node: ast.AST) -> Any:
        if self.tests:
            self.conditions[id(node)] = self.tests
        return super().visit(node)

    def visit_If(self, node: ast.If) -> None:
        """The body under (test, True), the orelse (elif included) under (test, False)."""
        self.visit(node.test)
        saved = self.tests
        for branch, body in ((True, node.body), (False, node.orelse)):
            self.tests = (*saved, (node.test, branch))
            for statement in body:
                self.visit(statement)
        self.tests = saved

    def visit_For(self, node: ast.For) -> None:
        self.fors.append(node)
        self.generic_visit(node)

    def _in(self, node: ast.AST, name: str) -> None:
        saved, self.scope = self.scope, (*self.scope, name)
        self.generic_visit(node)
        self.scope = saved

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        positional = [*node.args.posonlyargs, *node.args.args]
        pairs = [*zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults),
                 *((arg, d) for arg, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None)]
        self.params += [(arg.arg, default, default.lineno, node.name) for arg, default in pairs]
        self.functions.setdefault(node.name, node)
        self._in(node, node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        self.calls.append((node, self.scope))
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.assigns.append((target.id, node.value, node.lineno, self.scope))
            elif isinstance(target, ast.Attribute):
                self.attr_assigns.append((target, node.value, node.lineno))
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.target, ast.Name) and node.value is not None:
            self.assigns.append((node.target.id, node.value, node.lineno, self.scope))
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.deletes.append((target.id, node.lineno, self.scope))
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        self.withs.extend(node.items)
        self.generic_visit(node)

    visit_AsyncWith = visit_With


class ScriptTree:
    """The parsed script with the helpers the rules share."""

    def __init__(self, *, source: str, tree: ast.Module, folder: Path | None) -> None:
        self.lines = source.splitlines()
        self.folder = folder
        self.tree = tree
        self.reader = _Reader()
        self.reader.visit(tree)
        from memplan.integrations.script_scan.conditions import dataclass_defaults

        self.fields = dataclass_defaults(tree=tree)
        counts: dict[str, int] = {}
        for name, _, _, _ in self.reader.assigns:
            counts[name] = counts.get(name, 0) + 1
        self.constants = {name: (value, line) for name, value, line, _ in self.reader.assigns if counts[name] == 1}
        for name, _, _, _ in self.reader.params:
            counts[name] = counts.get(name, 0) + 1
        # a parameter default (def train(lora_r: int = 8), run through fire/argparse-like wrappers) when the
        # name is bound nowhere else: the value a run gets unless its command line says otherwise
        self.defaults = {name: (value, line, function) for name, value, line, function in self.reader.params
                         if counts[name] == 1}

    def snippet(self, line: int) -> str:
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        return text if len(text) <= 100 else text[:97] + "..."

    def calls_named(self, *names: str) -> list[ast.Call]:
        return [call for call, _ in self.reader.calls if call_name(call) in names]

    def value(self, node: ast.AST, depth: int = 0) -> tuple[Any, str]:
        """A literal value and how it was read: itself, a name assigned once to a literal, or arithmetic on those."""
        value = partial(node)
        if value is not MISSING or depth > 8:
            return value, ""
        if isinstance(node, ast.Name) and node.id in self.constants:
            assigned, line = self.constants[node.id]
            value, _ = self.value(assigned, depth + 1)
            return value, (f" (via {node.id}, line {line})" if value is not MISSING else "")
        if isinstance(node, ast.Name) and node.id in self.defaults:
            default, line, function = self.defaults[node.id]
            value, _ = self.value(default, depth + 1)
            return value, (f" (the default of {function}({node.id}=...), line {line}: a command-line value may differ)"
                           if value is not MISSING else "")
        if isinstance(node, ast.Attribute) and node.attr in self.fields:
            default, line, cls = self.fields[node.attr]
            value, _ = self.value(default, depth + 1)
            return value, (f" (the dataclass default {cls}.{node.attr}, line {line}: a command-line value may differ)"
                           if value is not MISSING else "")
        if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            left, right = self.value(node.left, depth + 1)[0], self.value(node.right, depth + 1)[0]
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
            if numbers and abs(left) < 2**40 and abs(right) < 2**40:
                try:
                    return ARITHMETIC[type(node.op)](left, right), f" ({ast.unparse(node)[:40]})"
                except ArithmeticError:
                    pass
        return MISSING, ""

    def keywords(self, call: ast.Call) -> dict[str, ast.AST]:
        return {k.arg: k.value for k in call.keywords if k.arg is not None}

    def has_splat(self, call: ast.Call) -> bool:
        return any(k.arg is None for k in call.keywords)


def make_finding(script: ScriptTree, *, name: str, value: Any, node: ast.AST, settings: dict[str, Any] | None = None,
                 note: str = "", gated: bool = True) -> Finding:
    """A finding at ``node``; under ``if`` tests its settings apply only when they hold (conditions.gate)."""
    from memplan.integrations.script_scan.conditions import gate

    line = getattr(node, "lineno", 0)
    settings, note, status = gate(script, node=node, settings=settings or {}, note=note) if gated else (
        settings or {}, note, "always")
    return Finding(name=name, value=str(value), line=line, snippet=script.snippet(line),
                   settings=tuple(settings.items()), note=note, status=status)


def lora_numbers(script: ScriptTree, keywords: dict[str, ast.AST], *, defaults: dict[str, Any],
                 source: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """Rank, alpha and dropout of one LoRA call or dict (``keywords``: keyword -> node), as plan settings, the
    shown ``keyword=value`` parts and notes. A keyword not given takes ``defaults`` (``source``'s, named in a
    note); a value that is not a literal, or not a valid one (rank and alpha > 0, 0 <= dropout < 1: peft's
    LoraConfig checks), is noted and leaves the plan's value. The one reader behind LoraConfig, xtuner's
    ``llm_lora`` and Unsloth's ``get_peft_model``."""
    settings: dict[str, Any] = {}
    shown: list[str] = []
    notes: list[str] = []
    for keyword, target in LORA_KEYS:
        node = keywords.get(keyword)
        value, via = script.value(node) if node is not None else (defaults[keyword], "")
        if node is None:
            notes.append(f"{keyword} not given: {source}'s default {defaults[keyword]}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number:
            notes.append(f"{keyword}={ast.unparse(node)[:30]}: {NOT_LITERAL}")
            continue
        if not (0 <= value < 1 if target == "dropout" else value > 0):
            notes.append(f"{keyword}={value}: not a valid LoRA {target}, the plan's value kept")
            continue
        settings[f"components.llm.lora.{target}"] = float(value) if target == "dropout" else int(value)
        shown.append(f"{keyword}={value}")
        if via:
            notes.append(f"{keyword}{via}")
    return settings, shown, notes


def keyword_findings(script: ScriptTree, *, keyword: str, calls: list[ast.Call], read) -> list[Finding]:
    """One finding per call that passes ``keyword``: ``read(value, node)`` gives (shown value, settings, note)."""
    out = []
    for call in calls:
        node = script.keywords(call).get(keyword)
        if node is None:
            continue
        value, via = script.value(node)
        if value is MISSING:
            out.append(make_finding(script, name=keyword, value=ast.unparse(node)[:60], node=node, note=NOT_LITERAL))
            continue
        shown, settings, note = read(value, node)
        out.append(make_finding(script, name=keyword, value=shown, node=node, settings=settings, note=(note + via).strip()))
    return out
