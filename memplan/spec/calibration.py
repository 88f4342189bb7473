"""The calibration file's schema: the few terms `memplan calibrate` fits on probe records.

Stored in profiles/calibration.yaml (schema memplan.calibration/1); memplan.estimate.overhead uses
them to turn the allocated peak into the reserved, device and needed views. The optional ``step_time``
section holds the step-time model's fitted terms (memplan/planning/steptime.py; absent: its defaults).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memplan.spec.allocator import EXPANDABLE

CALIBRATION_SCHEMA = "memplan.calibration/1"


class FamilyTerms(BaseModel):
    """Context and NCCL terms fitted on the records of one card family (calibration keyed by family)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_bytes: int = Field(ge=0)
    nccl_bytes: int = Field(default=0, ge=0)
    card: str | None = None  # the device name the records came from
    records: int = Field(default=0, ge=0)  # uncapped records the terms were fitted on


class KernelEfficiency(BaseModel):
    """Achieved / rated dense bf16 throughput of one card, per kernel class (memplan.planning.workload)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gemm: float = Field(default=0.35, gt=0, le=1)  # LLM matmuls, logits, projector, seg head
    attention: float = Field(default=0.25, gt=0, le=1)  # the LLM's s^2 term (SDPA/flash kernels)
    vision: float = Field(default=0.35, gt=0, le=1)  # the ViT
    sam2: float = Field(default=0.20, gt=0, le=1)  # Hiera encoder and mask decoder


class CardStepTerms(BaseModel):
    """Step-time terms fitted on the records of one card (and the hosts it ran on): its efficiencies and
    its host terms, which replace the top-level ones for plans on that card (calibration keyed by card,
    as the memory terms are keyed by family; H100 and H200 share a family, not a host)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    efficiency: KernelEfficiency
    module_call_s: float = Field(ge=0, le=0.1)
    zero3_fetch_s: float = Field(ge=0, le=1)
    cpu_adam_params_per_core_s: float = Field(gt=0)
    card: str | None = None  # the device name the records came from
    host_cpus: list[int] = []  # host cores the records' hosts reported
    side: str | None = None  # the records' side (memplan.planning.protocol.side_of): calibration
    fitted_on: list[str] = []
    records: int = 0
    in_sample: dict[str, float] = {}  # on the fit's own records


class StepTimeTerms(BaseModel):
    """The step-time model's fitted terms (`memplan calibrate`), with literature defaults.

    ``efficiency`` is per card (catalogue name, memplan/profiles/gpus.yaml); a card without an entry
    uses ``default``. The per-call, per-gather and CPU Adam terms are host and framework costs.
    ``cards``: a card's own fit (efficiencies and host terms), which wins over both for that card
    (``on_card``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    efficiency: dict[str, KernelEfficiency] = {"default": KernelEfficiency()}
    module_call_s: float = Field(default=30e-6, ge=0, le=0.1)  # per module call per pass
    zero3_fetch_s: float = Field(default=100e-6, ge=0, le=1)  # per ZeRO-3 parameter gather
    cpu_adam_params_per_core_s: float = Field(default=5e7, gt=0)  # DeepSpeedCPUAdam, per host core
    fitted_on: list[str] = []
    records: int = 0  # records the fit used
    in_sample: dict[str, float] = {}  # spearman, within_30, within_50, median_ratio on the fit's records
    cards: dict[str, CardStepTerms] = {}  # per-card fits (catalogue name); absent: the terms above

    def for_card(self, name: str) -> KernelEfficiency:
        card = self.cards.get(name)
        if card is not None:
            return card.efficiency
        return self.efficiency.get(name) or self.efficiency.get("default") or KernelEfficiency()

    def on_card(self, name: str) -> "StepTimeTerms":
        """The terms a plan on card ``name`` uses: self, or (with a per-card fit) self with that card's
        efficiencies and host terms and no per-card entries (the result is cached per instance)."""
        card = self.cards.get(name)
        if card is None:
            return self
        cache = _ON_CARD
        key = (id(self), name)
        hit = cache.get(key)
        if hit is not None and hit[0] is self:
            return hit[1]
        resolved = self.model_copy(update={
            "efficiency": {**self.efficiency, name: card.efficiency}, "module_call_s": card.module_call_s,
            "zero3_fetch_s": card.zero3_fetch_s, "cpu_adam_params_per_core_s": card.cpu_adam_params_per_core_s,
            "cards": {}})
        cache[key] = (self, resolved)
        return resolved


_ON_CARD: dict[tuple[int, str], tuple[StepTimeTerms, StepTimeTerms]] = {}


class Calibration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: str = Field(default=CALIBRATION_SCHEMA, alias="schema")
    allocated_constant_bytes: int = 0  # cuBLAS workspaces and small tensors the model omits
    reserved_ratio: float = Field(default=0.05, ge=0, le=2)  # reserved ~ allocated x (1 + ratio)
    reserved_constant_bytes: int = 2 * 1024**2
    context_bytes: int = 512 * 1024**2  # device used - reserved, one GPU
    nccl_bytes: int = 0  # extra device memory per rank when several GPUs communicate
    host_base_bytes: int = 3 * 1024**3  # host RSS of one training process before offload
    # Under a full card the caching allocator frees its cached blocks and retries before it reports an
    # OOM, so what a run needs is less than what it reserves on a roomy card (see needed_bytes). Both
    # fitted on probes under --vram-cap; pressure_ratio None: the verdict uses the roomy-card device view.
    pressure_ratio: float | None = Field(default=None, ge=0, le=2)  # stranded share of allocated memory
    pressure_block: float = Field(default=0.0, ge=0, le=4)  # stranded share of the largest block
    # How close to the card a verdict stops meaning much: the widest pre-registered verdict miss, as a
    # share of the card (benchmarks/rescore.py --tight-band, from predictions committed before their runs).
    # A plan whose needed bytes lie within this share of the VRAM either way is reported as tight.
    tight_band: float = Field(default=0.0, ge=0, le=0.5)
    # The same, per allocator setting other than the default (stack.allocator: "expandable_segments"), from the
    # pre-registered verdicts of runs made and predicted under that setting; one not listed gets tight_band.
    tight_bands: dict[str, Annotated[float, Field(ge=0, le=0.5)]] = {}
    fitted_on: list[str] = []  # record files the fit used
    card: str | None = None
    versions: dict[str, str] = {}
    median_error: dict[str, float] = {}
    family: str | None = None  # the card family the top-level terms were fitted on (e.g. hopper)
    families: dict[str, FamilyTerms] = {}  # per-family context/NCCL; the estimate picks the plan's card's
    step_time: StepTimeTerms | None = None  # None: StepTimeTerms() defaults

    @field_validator("tight_bands")
    @classmethod
    def _allocators(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - {EXPANDABLE})
        if unknown:
            raise ValueError(f"{unknown[0]!r} is no allocator setting with a band of its own; allowed: {EXPANDABLE} "
                             "(the default allocator's band is tight_band)")
        return value

    def band_for(self, allocator: str) -> float:
        """The tight band of a plan under ``allocator`` (stack.allocator): tight_bands' entry, else tight_band."""
        return self.tight_bands.get(allocator, self.tight_band)


DEFAULT = Calibration()
