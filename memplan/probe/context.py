"""The CUDA context a probe measures, and the one a --vram-cap CARD emulates.

The context is what a process holds on the device outside PyTorch's caching allocator: device used
(torch.cuda.mem_get_info: total - free) less torch.cuda.memory_reserved. Read as a rank starts, it is
the CUDA context before NCCL or any model; records keep it per rank and per record.
"""

from __future__ import annotations

import torch


def start_context_bytes(device: torch.device) -> int | None:
    """Device used - reserved as a rank starts: the CUDA context before NCCL or any model."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return max(int(total - free) - int(torch.cuda.memory_reserved(device)), 0)


def emulated_context_bytes(vram_cap_card: str | None) -> int | None:
    """The context of the card --vram-cap names (its family's, profiles/gpus.yaml); None for a cap in GiB."""
    if not vram_cap_card:
        return None
    from memplan.spec.cards import family_of

    family = family_of(vram_cap_card)
    return family.context_bytes if family else None
