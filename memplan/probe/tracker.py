"""Live tensor-storage bytes on any device, with a peak: a CPU stand-in for the CUDA allocator stats.

``StorageTracker`` is a ``TorchDispatchMode``: every tensor an operator returns inside the mode is
recorded by its untyped storage (deduplicated, so views and aliases count once) with a weak reference
whose callback subtracts the storage's bytes when it is freed. This is the bookkeeping of
torch/distributed/_tools/mem_tracker.py (``_WeakRefInfo``), without its module attribution.
Tensors created before the mode began are added with ``track()``.

The API mirrors the allocator's: ``current()`` ~ ``torch.cuda.memory_allocated``, ``peak()`` ~
``torch.cuda.max_memory_allocated``, ``reset_peak()`` ~ ``torch.cuda.reset_peak_memory_stats``.
Differences: no 512-byte rounding and no cache, so "reserved" equals "allocated" here; storages
resized in place after creation keep their first size.

An optional ``limit_bytes`` emulates a card of that size: the first operator whose outputs take the
live total past it raises ``torch.OutOfMemoryError`` with the allocator's wording
("Tried to allocate X GiB"), so the probe's OOM path can be tested on a CPU.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary



def format_size(num_bytes: int) -> str:
    """Bytes in the allocator's style ('20.00 MiB'), as c10/cuda/CUDACachingAllocator.cpp's format_size."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} bytes"


def _storages(value: Any) -> list[torch.UntypedStorage]:
    """Untyped storages behind a tensor (none for meta/fake tensors or tensor subclasses without data)."""
    if not isinstance(value, torch.Tensor) or value.device.type == "meta":
        return []
    try:
        return [value.untyped_storage()]
    except (RuntimeError, NotImplementedError):
        return []


class StorageTracker(TorchDispatchMode):
    """Counts live storage bytes (deduplicated by storage) and their peak, per device type."""

    def __init__(self, *, device_type: str | None = None, limit_bytes: int | None = None) -> None:
        super().__init__()
        self.device_type = device_type  # None: count every device
        self.limit_bytes = limit_bytes
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: dict[int, weakref.ref] = {}
        self._current = 0
        self._peak = 0

    def current(self) -> int:
        """Bytes of live tracked storages now."""
        return self._current

    def peak(self) -> int:
        """Largest ``current()`` since construction or the last ``reset_peak()``."""
        return self._peak

    def reset_peak(self) -> None:
        self._peak = self._current

    def track(self, tensors: Iterable[Any]) -> int:
        """Add tensors created outside the mode (model parameters, inputs); returns bytes added."""
        return sum(self._add(storage) for tensor in tensors for storage in _storages(tensor))

    def _counts(self, storage: torch.UntypedStorage) -> bool:
        return self.device_type is None or storage.device.type == self.device_type

    def _add(self, storage: torch.UntypedStorage) -> int:
        if not self._counts(storage) or storage in self._sizes:
            return 0
        size = int(storage.nbytes())
        self._sizes[storage] = size
        key = id(storage)
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key, size=size: self._release(key, size))
        self._current += size
        self._peak = max(self._peak, self._current)
        return size

    def _release(self, key: int, size: int) -> None:
        self._refs.pop(key, None)
        self._current -= size

    def _check_limit(self, added: int) -> None:
        if self.limit_bytes is not None and added and self._current > self.limit_bytes:
            raise torch.OutOfMemoryError(
                f"StorageTracker: Tried to allocate {format_size(added)}. "
                f"{self._current - added} bytes in use of a {self.limit_bytes} byte limit (emulated card)"
            )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        out = func(*args, **(kwargs or {}))
        leaves, _ = tree_flatten(out)
        added = sum(self._add(storage) for leaf in leaves for storage in _storages(leaf))
        self._check_limit(added)
        return out
