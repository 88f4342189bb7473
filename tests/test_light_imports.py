"""The estimate path must not import torch, transformers or DeepSpeed."""

import subprocess
import sys


def test_estimate_path_imports_no_heavy_modules():
    code = (
        "import sys, memplan.cli.main, memplan.estimate, memplan.estimate.phases, memplan.spec.loading\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(memplan.cli.main.app, ['estimate', '--format', 'json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(' '.join(m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'accelerate') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"
