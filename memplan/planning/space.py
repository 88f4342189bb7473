"""The search space of `memplan search` (the knobs and their values) and one point in it (Knobs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SearchSpace:
    """The knobs and their values (memory-monotone knobs listed smallest first)."""

    zero_offload: tuple[tuple[int, str], ...] = (
        (0, "none"), (1, "none"), (1, "optimizer"), (2, "none"), (2, "optimizer"),
        (3, "none"), (3, "optimizer"), (3, "all"),
    )
    checkpointing: tuple[bool, ...] = (True, False)
    micro_batch: tuple[int, ...] = (1, 2, 4)
    sam2_resolution: tuple[int, ...] = (512, 768, 1024)
    lora_rank: tuple[int, ...] = (16, 32, 64, 128, 256)
    decoder_trained: tuple[bool, ...] = (False, True)
    reduce_bucket_size: tuple[int, ...] = (50_000_000, 200_000_000, 500_000_000)
    allgather_bucket_size: tuple[int, ...] = (50_000_000, 200_000_000, 500_000_000)
    overlap_comm: tuple[bool, ...] = (False, True)

    def size(self) -> int:
        return (len(self.zero_offload) * len(self.checkpointing) * len(self.micro_batch)
                * len(self.sam2_resolution) * len(self.lora_rank) * len(self.decoder_trained)
                * len(self.reduce_bucket_size) * len(self.allgather_bucket_size) * len(self.overlap_comm))


@dataclass(frozen=True)
class Knobs:
    zero_stage: int
    offload: str
    checkpointing: bool
    micro_batch: int
    sam2_resolution: int
    lora_rank: int | None
    decoder_trained: bool
    reduce_bucket_size: int
    allgather_bucket_size: int
    overlap_comm: bool

    def name(self) -> str:
        def short(n: int) -> str:
            mantissa, exponent = f"{n:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"

        rank = f"-r{self.lora_rank}" if self.lora_rank else ""
        return (f"z{self.zero_stage}-{self.offload}-{'ckpt' if self.checkpointing else 'nockpt'}-mb{self.micro_batch}"
                f"-sam{self.sam2_resolution}{rank}-{'dec' if self.decoder_trained else 'decfrozen'}"
                f"-rb{short(self.reduce_bucket_size)}-ab{short(self.allgather_bucket_size)}"
                f"-{'ov' if self.overlap_comm else 'noov'}")

    def describe(self) -> str:
        rank = f"LoRA r{self.lora_rank}, " if self.lora_rank else ""
        return (f"search candidate: ZeRO-{self.zero_stage}, offload {self.offload}, LLM checkpointing "
                f"{'on' if self.checkpointing else 'off'}, micro-batch {self.micro_batch}, SAM2 {self.sam2_resolution}, "
                f"{rank}mask decoder {'trained' if self.decoder_trained else 'frozen'}, buckets "
                f"{self.reduce_bucket_size:.0e}/{self.allgather_bucket_size:.0e}, overlap_comm "
                f"{'on' if self.overlap_comm else 'off'}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
