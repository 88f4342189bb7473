"""The calibration file's schema: the few terms `memplan calibrate` fits on probe records.

Stored in profiles/calibration.yaml (schema memplan.calibration/1); memplan.estimate.overhead uses
them to turn the allocated peak into the reserved, device and needed views.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

CALIBRATION_SCHEMA = "memplan.calibration/1"


class FamilyTerms(BaseModel):
    """Context and NCCL terms fitted on the records of one card family (calibration keyed by family)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_bytes: int = Field(ge=0)
    nccl_bytes: int = Field(default=0, ge=0)
    card: str | None = None  # the device name the records came from
    records: int = Field(default=0, ge=0)  # uncapped records the terms were fitted on


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
    fitted_on: list[str] = []  # record files the fit used
    card: str | None = None
    versions: dict[str, str] = {}
    median_error: dict[str, float] = {}
    family: str | None = None  # the card family the top-level terms were fitted on (e.g. hopper)
    families: dict[str, FamilyTerms] = {}  # per-family context/NCCL; the estimate picks the plan's card's


DEFAULT = Calibration()
