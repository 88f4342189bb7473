"""Cards as CUDA sees them: the capacity a verdict is decided against, and the card a probe emulates.

A "24 GB" RTX 3090 is 24576 MiB to nvidia-smi but 23.70 GiB to CUDA (torch.cuda.get_device_properties
().total_memory; PyTorch's OOM message prints it as "23.70 GiB total capacity"): the driver keeps the
rest. A process then spends its CUDA context (device used - reserved, per architecture family) out of
that total before the caching allocator gets any. profiles/gpus.yaml holds both numbers with their
sources (memplan.spec.gpus); this module turns them into bytes for the estimate and the probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from memplan.spec.gpus import FamilySpec, GpuSpec, get_family, get_gpu
from memplan.spec.loading import InputError
from memplan.spec.units import GIB, gib_to_bytes

VRAM_TOLERANCE_GIB = 0.005  # --vram 24 on a card nvidia-smi calls 23.99 GiB (RTX 4090) is the whole card


@lru_cache(maxsize=64)
def _card(name: str) -> GpuSpec:
    return get_gpu(name)


def card_capacity_bytes(*, gpu: str | None, vram_gib: float) -> int:
    """Bytes a verdict is decided against.

    No card named: ``vram_gib`` is what CUDA reports (bytes = vram_gib x 2^30). A named card with a
    catalogued CUDA total: that total (cuda_total_bytes), or ``vram_gib`` when it is smaller (a share
    of the card); ``vram_gib`` at the card's nvidia-smi size (24 for an RTX 3090) means the whole card.
    """
    requested = gib_to_bytes(vram_gib)
    if not gpu:
        return requested
    card = _card(gpu)
    if card.cuda_total_bytes is None:
        return requested
    return min(requested, card.cuda_total_bytes)


def check_vram(*, gpu: str | None, vram_gib: float) -> None:
    """Refuse a VRAM above the named card's (``--gpu rtx-3090 --vram 80``), one line naming both."""
    if not gpu:
        return
    card = _card(gpu)
    if vram_gib > card.vram_gib + VRAM_TOLERANCE_GIB:
        cuda = f" (CUDA reports {card.cuda_total_bytes / GIB:.2f} GiB)" if card.cuda_total_bytes else ""
        raise InputError(f"hardware.vram_gib={vram_gib:g}: above {card.name}'s {card.vram_gib:g} GiB{cuda}; "
                         f"give --vram <= {card.vram_gib:g} or another --gpu")


def family_of(gpu: str | None) -> FamilySpec | None:
    """The architecture family (with its context size) of a catalogued card; None without one."""
    if not gpu:
        return None
    return get_family(_card(gpu).family)


@dataclass(frozen=True)
class VramCap:
    """What ``--vram-cap`` emulates: ``cap_bytes`` of CUDA-visible memory and, for a named card, the
    context that card's family spends out of it (``context_bytes``; None: the probing card's own)."""

    cap_bytes: int
    card: str | None = None
    context_bytes: int | None = None
    context_source: str | None = None

    @property
    def gib(self) -> float:
        return self.cap_bytes / GIB


def parse_vram_cap(value: str | float | None) -> VramCap | None:
    """``--vram-cap`` as GiB (``24``) or a card name (``rtx-3090``: its CUDA total, its family's context)."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        gib = float(text)
    except ValueError:
        gib = None
    if gib is not None:
        if not (0 < gib < 4096):
            raise InputError(f"--vram-cap={text}: must be a positive number of GiB or a card name (e.g. rtx-3090)")
        return VramCap(cap_bytes=gib_to_bytes(gib))
    try:
        card = _card(text)
    except InputError as error:  # an unknown name: the message names the closest
        raise InputError(f"--vram-cap={text}: neither GiB nor a catalogued card: {error}") from None
    if card.cuda_total_bytes is None:
        raise InputError(f"--vram-cap={text}: {card.name} has no cuda_total_bytes in profiles/gpus.yaml")
    family = get_family(card.family)
    return VramCap(cap_bytes=card.cuda_total_bytes, card=card.name,
                   context_bytes=family.context_bytes if family else None,
                   context_source=family.source if family else None)
