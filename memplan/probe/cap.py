"""The VRAM cap (``--vram-cap``): emulate a smaller card on a larger one."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DeviceCap:
    """Emulate a card of ``cap`` bytes on a larger one.

    A card's memory holds the caching allocator's pool plus what lies outside it (the CUDA context,
    NCCL's buffers, cuBLAS workspaces, other processes' contexts). So the allocator is limited to
    ``cap - outside`` with ``outside = (total - free) - memory_reserved`` read from the device
    (torch.cuda.mem_get_info), through torch.cuda.set_per_process_memory_fraction. ``apply()`` runs
    before every phase, since NCCL allocates its buffers lazily (at init, at the first collective).
    The largest ``outside`` seen is kept for the record. Inert on the CPU (the StorageTracker caps
    there) and without a cap.
    """

    device: torch.device
    cap: int | None
    outside: int = 0

    @property
    def active(self) -> bool:
        return self.device.type == "cuda" and bool(self.cap)

    def apply(self) -> None:
        if not self.active:
            return
        free, total = torch.cuda.mem_get_info(self.device)
        outside = max(int(total - free) - int(torch.cuda.memory_reserved(self.device)), 0)
        self.outside = max(self.outside, outside)
        torch.cuda.set_per_process_memory_fraction(min(max(self.cap - outside, 0) / total, 1.0), self.device)

    def lift(self) -> None:
        if self.active:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    def note(self) -> str:
        return (f"vram cap {self.cap} bytes: allocator limited to the cap less {self.outside} bytes outside it "
                f"(CUDA context, NCCL, workspaces; largest seen)")
