"""Every `from memplan... import name` in benchmarks/ and scripts/ resolves, function-local imports included.

These scripts run on the GPU machine, where a moved name costs a device run (the accelerate FSDP2 run of
2026-12-02 ended on `make_optimizer` no longer living in memplan.probe.run); here it costs a CPU test.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


def memplan_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from memplan... import name` in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("memplan"):
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names if alias.name.startswith("memplan")]
    return out


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports_resolve(path):
    pytest.importorskip("torch")
    missing = []
    for module, name in memplan_imports(path):
        try:
            imported = importlib.import_module(module)
        except ImportError as error:
            missing.append(f"{module}: {error}")
            continue
        if name and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.name}: " + ", ".join(missing)
