"""``memplan probe``: build the real model with random weights, apply a plan, train a few steps, measure.

Modules: ``build`` (profile -> nn.Module), ``apply`` (plan -> freezing, LoRA, checkpointing, dtypes),
``engines`` (plain PyTorch/DDP, DeepSpeed), ``meter`` (readings per phase), ``census`` (bytes per
category of live tensors), ``cap`` (the VRAM cap), ``faults`` (the fault hook), ``distributed`` (ranks,
process group), ``environment`` (versions, card, host), ``tracker`` (CPU storage tracker), ``run``
(the phases and the record), ``records`` (JSONL, no torch), ``launch`` (torchrun for several GPUs). torch, transformers, peft and DeepSpeed are imported only
when a probe runs: importing this package (or ``memplan.probe.records``) does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_probe", "launch_probe", "append_record", "read_records", "SCHEMA"]


def __getattr__(name: str) -> Any:
    """Lazy exports, so that ``import memplan.probe`` stays free of torch."""
    if name == "run_probe":
        from memplan.probe.run import run_probe

        return run_probe
    if name == "launch_probe":
        from memplan.probe.launch import launch_probe

        return launch_probe
    if name in ("append_record", "read_records", "SCHEMA"):
        from memplan.probe import records

        return getattr(records, name)
    raise AttributeError(f"module 'memplan.probe' has no attribute {name!r}")
