"""The GPU catalogue (profiles/gpus.yaml): VRAM, dense bf16 throughput, memory and link bandwidths.

Used by the step-time model (memplan/planning/steptime.py) and by ``--gpu NAME``. Every entry cites the
vendor datasheet it comes from; names are looked up case-insensitively, with aliases (including
the ``torch.cuda.get_device_name()`` strings found in probe records).
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memplan.spec.loading import PROFILES_DIR, InputError, describe_validation_error, read_document

CATALOGUE_PATH = PROFILES_DIR / "gpus.yaml"
CATALOGUE_SCHEMA = "memplan.gpus/1"

# PCIe payload bandwidth per lane and direction, GB/s, after line coding (128b/130b from gen 3):
# PCI-SIG base specifications (gen 3: 8 GT/s, gen 4: 16 GT/s, gen 5: 32 GT/s).
PCIE_GBPS_PER_LANE = {3: 0.985, 4: 1.969, 5: 3.938}


class GpuSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    vendor_name: str
    vram_gib: float = Field(gt=0)
    bf16_tflops: float = Field(gt=0)  # dense, FP32 accumulate
    memory_gbps: float = Field(gt=0)
    pcie_gen: int = Field(ge=3, le=5)
    pcie_lanes: int = Field(gt=0, le=16)
    nvlink_gbps: float = Field(ge=0)  # total (both directions), as datasheets quote it; 0: none
    nvlink_group: int = Field(default=1, ge=1)
    # GPU-to-GPU topology: nvlink (every card of an nvlink_group on one NVLink/NVSwitch fabric),
    # nvlink-bridge (pairs joined by a bridge, the rest over PCIe), pcie (peer traffic over PCIe only)
    interconnect: Literal["nvlink", "nvlink-bridge", "pcie"] = "pcie"
    datasheet: str = Field(min_length=8)
    aliases: tuple[str, ...] = ()
    # the card as CUDA sees it (memplan.spec.cards uses these)
    family: str | None = None  # architecture family: a key of the catalogue's `families`
    cuda_total_bytes: int | None = Field(default=None, gt=0)  # torch.cuda.get_device_properties().total_memory
    cuda_total_source: str | None = None  # a record, a PyTorch OOM message, or "assumption: ..."
    driver_reserved_bytes: int | None = Field(default=None, ge=0)  # nvidia-smi total - cuda_total_bytes

    @property
    def pcie_gbps(self) -> float:
        """Host link bandwidth per direction, GB/s (gen x lanes)."""
        return PCIE_GBPS_PER_LANE[self.pcie_gen] * self.pcie_lanes

    def link_kind(self, num_gpus: int) -> str:
        """"nvlink" when ``num_gpus`` cards share one NVLink domain, else "pcie"."""
        return "nvlink" if self.interconnect != "pcie" and self.nvlink_gbps and num_gpus <= self.nvlink_group else "pcie"

    def collective_gbps(self, num_gpus: int) -> float:
        """Per-direction bandwidth a ring collective over ``num_gpus`` cards gets, GB/s: NVLink when
        all of them share one NVLink domain (half the datasheet's bidirectional figure), else PCIe."""
        if self.link_kind(num_gpus) == "nvlink":
            return self.nvlink_gbps / 2
        return self.pcie_gbps


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


@lru_cache(maxsize=4)
def _catalogue(path: str = str(CATALOGUE_PATH)) -> dict[str, GpuSpec]:
    document = read_document(Path(path))
    if document.get("schema") != CATALOGUE_SCHEMA:
        raise InputError(f"{path}: schema={document.get('schema')!r}: expected {CATALOGUE_SCHEMA!r}")
    gpus: dict[str, GpuSpec] = {}
    for name, fields in (document.get("gpus") or {}).items():
        try:
            gpus[name] = GpuSpec.model_validate({"name": name, **fields})
        except ValidationError as error:
            raise InputError(describe_validation_error(error, f"{path}: gpus.{name}")) from None
    return gpus


class FamilySpec(BaseModel):
    """An architecture family's CUDA context: device used - reserved of one process without NCCL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    context_bytes: int = Field(gt=0)
    source: str = Field(min_length=8)  # "measured: ..." or "assumption: ..."

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")


@lru_cache(maxsize=4)
def _families(path: str = str(CATALOGUE_PATH)) -> dict[str, FamilySpec]:
    families: dict[str, FamilySpec] = {}
    for name, fields in (read_document(Path(path)).get("families") or {}).items():
        try:
            families[name] = FamilySpec.model_validate({"name": name, **fields})
        except ValidationError as error:
            raise InputError(describe_validation_error(error, f"{path}: families.{name}")) from None
    return families


def get_family(name: str | None) -> FamilySpec | None:
    """The catalogue's entry for an architecture family (None for an unknown or missing name)."""
    return _families().get(name) if name else None


def gpu_names() -> list[str]:
    return list(_catalogue())


def catalogue() -> list[GpuSpec]:
    return list(_catalogue().values())


def _index() -> dict[str, GpuSpec]:
    index: dict[str, GpuSpec] = {}
    for spec in _catalogue().values():
        for spelling in (spec.name, spec.vendor_name, *spec.aliases):
            index[_key(str(spelling))] = spec
    return index


def get_gpu(name: str) -> GpuSpec:
    """A catalogued GPU by name or alias; an unknown name raises InputError naming the closest."""
    spec = _index().get(_key(name))
    if spec is not None:
        return spec
    close = difflib.get_close_matches(_key(name), list(_index()), n=6, cutoff=0.4)
    names = list(dict.fromkeys(_index()[c].name for c in close))[:3]
    hint = f"closest: {', '.join(names)}" if names else f"known: {', '.join(gpu_names())}"
    raise InputError(f"gpu={name!r}: not in the GPU catalogue (profiles/gpus.yaml); {hint}")


def match_device_name(device_name: str | None) -> GpuSpec | None:
    """The catalogue entry for a ``torch.cuda.get_device_name()`` string, or None."""
    if not device_name:
        return None
    spec = _index().get(_key(device_name))
    if spec is not None:
        return spec
    text = _key(device_name)
    for spec in _catalogue().values():  # longest alias contained in the device string
        spellings = sorted((_key(s) for s in (spec.name, *spec.aliases)), key=len, reverse=True)
        if any(len(s) >= 4 and s in text for s in spellings):
            return spec
    return None


def gpu_for(name: str | None, vram_gib: float) -> GpuSpec:
    """The plan's GPU: its catalogue name, or (none given) the first catalogued card whose VRAM is
    nearest the plan's ``vram_gib`` (24 GiB -> rtx-3090, 80 GiB -> a100-80gb), stated in reports."""
    if name:
        return get_gpu(name)
    return min(_catalogue().values(), key=lambda spec: abs(spec.vram_gib - vram_gib))
