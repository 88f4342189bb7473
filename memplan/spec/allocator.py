"""PyTorch's CUDA caching allocator settings (PYTORCH_CUDA_ALLOC_CONF) as a plan's ``stack.allocator``.

The variable is a comma-separated list of ``option:value`` pairs (c10/cuda/CUDAAllocatorConfig.cpp,
parseArgs); ``expandable_segments:True`` switches on expandable segments. Pure: no torch.
"""

from __future__ import annotations

from typing import Any

EXPANDABLE = "expandable_segments"
ENV = "PYTORCH_CUDA_ALLOC_CONF"


def conf_options(alloc_conf: str | None) -> dict[str, str]:
    """A PYTORCH_CUDA_ALLOC_CONF value's ``option:value`` pairs, stripped; a repeated option keeps its last
    value, as parseArgs does."""
    options: dict[str, str] = {}
    for part in (alloc_conf or "").split(","):
        key, _, setting = part.partition(":")
        if key.strip():
            options[key.strip()] = setting.strip()
    return options


def allocator_of(alloc_conf: str | None) -> str:
    """The plan's allocator for a PYTORCH_CUDA_ALLOC_CONF value: expandable_segments where the
    variable sets ``expandable_segments:True`` (the last setting wins, as in parseArgs), else default."""
    return EXPANDABLE if conf_options(alloc_conf).get(EXPANDABLE, "").lower() == "true" else "default"


def unmodelled_options(alloc_conf: str | None) -> tuple[str, ...]:
    """The options of a PYTORCH_CUDA_ALLOC_CONF value the estimate does not model: every key but
    expandable_segments (max_split_size_mb, garbage_collection_threshold, roundup_power2_divisions, backend,
    ...: CUDAAllocatorConfig.cpp parseArgs). A run made with any of them placed its blocks otherwise, so its
    verdict and reserved bytes are not the default allocator's (h100-layout-b: max_split_size_mb:512 made two
    runs fit that ran out without it)."""
    return tuple(sorted(key for key in conf_options(alloc_conf) if key != EXPANDABLE))


def conf_with_allocator(alloc_conf: str | None, allocator: str) -> str | None:
    """PYTORCH_CUDA_ALLOC_CONF with expandable segments switched on for allocator=expandable_segments
    (the user's other options kept); unchanged for default."""
    if allocator != EXPANDABLE or allocator_of(alloc_conf) == EXPANDABLE:
        return alloc_conf
    kept = [part for part in (alloc_conf or "").split(",") if part.strip() and part.partition(":")[0].strip() != EXPANDABLE]
    return ",".join([*kept, f"{EXPANDABLE}:True"])


def launch_env(allocator: str) -> dict[str, str]:
    """What a launch line must export for the plan's allocator (every rank inherits it)."""
    return {ENV: f"{EXPANDABLE}:True"} if allocator == EXPANDABLE else {}


def record_plan_document(record: dict[str, Any]) -> dict[str, Any]:
    """A probe record's plan as it ran: records made before plans had ``stack.allocator`` carry the
    allocator only in environment.alloc_conf, so it is read from there (the record is not rewritten)."""
    plan = dict(record.get("plan") or {})
    stack = dict(plan.get("stack") or {})
    if "allocator" not in stack:
        allocator = allocator_of((record.get("environment") or {}).get("alloc_conf"))
        if allocator != "default":
            plan["stack"] = {**stack, "allocator": allocator}
    return plan
