"""Bytes per memory Category from the live tensors of a model and its optimizer (best effort).

weights (frozen parameters on the device), trainable_weights, gradients (``.grad`` plus DeepSpeed's
gradient partitions and buckets: optimizer-wrapper attributes whose name contains "grad"),
master_weights (DeepSpeed's fp32 partitions: attributes containing "fp32" but not "grad") and
optimizer_state (tensors in the torch optimizer's ``state``). A storage is counted once, in the first
category that finds it, in that order. The probe takes the max over steps of each category.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from memplan.spec.vocabulary import Category

CENSUS_CATEGORIES = (Category.WEIGHTS, Category.TRAINABLE_WEIGHTS, Category.GRADIENTS,
                     Category.MASTER_WEIGHTS, Category.OPTIMIZER_STATE)


def _storage_key(tensor: torch.Tensor) -> tuple[str, int] | None:
    try:
        storage = tensor.untyped_storage()
        return (str(tensor.device), storage.data_ptr()) if storage.nbytes() else None
    except (RuntimeError, NotImplementedError):
        return None


def _param_tensor(param: torch.Tensor) -> torch.Tensor:
    """The tensor holding a parameter's data on this rank (ZeRO-3: its partition ``ds_tensor``)."""
    return getattr(param, "ds_tensor", None) if hasattr(param, "ds_tensor") else param


def _walk_tensors(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors in ``value`` and in lists, tuples and dicts nested up to three deep."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk_tensors(item, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for item in value.values():
            yield from _walk_tensors(item, depth + 1)


def _inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside DeepSpeed's ZeRO / bf16 wrappers."""
    inner = optimizer
    for _ in range(3):
        if isinstance(inner, torch.optim.Optimizer) and not hasattr(inner, "optimizer"):
            break
        inner = getattr(inner, "optimizer", inner)
    return inner


def category_bytes(model: torch.nn.Module, optimizer: Any, device: torch.device) -> dict[str, int]:
    """Bytes per Category value from the tensors on ``device`` (see the module docstring)."""
    seen: set[tuple[str, int]] = set()
    totals = {category.value: 0 for category in CENSUS_CATEGORIES}

    def add(category: Category, tensor: torch.Tensor | None) -> None:
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2's DTensor: this rank's shard
        if tensor is None or not isinstance(tensor, torch.Tensor) or tensor.device.type != device.type:
            return
        key = _storage_key(tensor)
        if key is None or key in seen:
            return
        seen.add(key)
        totals[category.value] += int(tensor.untyped_storage().nbytes())

    params = list(model.parameters())
    for param in params:
        add(Category.GRADIENTS, param.grad)
    wrapper_attrs = vars(optimizer) if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer) else {}
    for name, value in wrapper_attrs.items():
        if "grad" in name.lower():
            for tensor in _walk_tensors(value):
                add(Category.GRADIENTS, tensor)
    for name, value in wrapper_attrs.items():
        if "fp32" in name.lower() and "grad" not in name.lower():
            for tensor in _walk_tensors(value):
                add(Category.MASTER_WEIGHTS, tensor)
    inner = _inner_optimizer(optimizer) if optimizer is not None else None
    for state in getattr(inner, "state", {}).values():
        for tensor in _walk_tensors(state):
            add(Category.OPTIMIZER_STATE, tensor)
    for param in params:
        add(Category.TRAINABLE_WEIGHTS if param.requires_grad else Category.WEIGHTS, _param_tensor(param))
    return totals
