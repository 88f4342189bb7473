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
    # --vram-cap CARD: that card's family context (profiles/gpus.yaml `families`) replaces this card's
    # own: the allocator gets cap - emulated context - NCCL, NCCL read as what lies outside the allocator
    # beyond the larger of the context measured at start and the emulated context (0 without a process
    # group). The emulated context is a loaded one (kernels in: the Hopper measurement), while the start
    # context is read before any kernel loads; counting from the start context alone charged the lazy
    # growth twice, once in the emulated context and once as "NCCL" (0.26 GB too strict on the H200's
    # DeepSpeed runs of h200-batch4: outside 1.80 GB = 0.81 context + 0.99 NCCL, start context 0.55).
    emulated_context: int | None = None
    start_context: int = 0

    @property
    def active(self) -> bool:
        return self.device.type == "cuda" and bool(self.cap)

    def apply(self) -> None:
        if not self.active:
            return
        free, total = torch.cuda.mem_get_info(self.device)
        outside = max(int(total - free) - int(torch.cuda.memory_reserved(self.device)), 0)
        self.outside = max(self.outside, outside)
        if self.emulated_context is None:
            share = self.cap - outside
        else:
            import torch.distributed as dist

            grouped = dist.is_available() and dist.is_initialized()
            nccl = max(outside - max(self.start_context, self.emulated_context), 0) if grouped else 0
            share = self.cap - self.emulated_context - nccl
        torch.cuda.set_per_process_memory_fraction(min(max(share, 0) / total, 1.0), self.device)

    def lift(self) -> None:
        if self.active:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    def note(self) -> str:
        if self.emulated_context is not None:
            return (f"vram cap {self.cap} bytes (a catalogued card): allocator limited to the cap less the card's "
                    f"context {self.emulated_context} bytes and NCCL (outside the allocator beyond the larger of that "
                    f"context and this card's start context {self.start_context}; largest outside seen {self.outside})")
        return (f"vram cap {self.cap} bytes: allocator limited to the cap less {self.outside} bytes outside it "
                f"(CUDA context, NCCL, workspaces; largest seen)")
