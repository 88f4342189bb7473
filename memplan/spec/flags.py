"""Plans built from flag values: a plan file (or the official recipe) with flags layered on top.

Every command, test and benchmark builds its plans here (``plan_from_flags``); the CLI only declares
the options. A flag left at None is not given; the flag names are the keys of ``FLAG_PATHS`` plus
``nodes``, ``offload`` and ``lora_rank``, which set more than one field (--gpus is per node).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from memplan.spec.loading import (DEEPSPEED_ONLY, PLANS_DIR, InputError, load_profile, plan_document,
                                  plan_from_document, printable)
from memplan.spec.cards import check_vram
from memplan.spec.inherit import deep_merge  # noqa: F401 (the one deep merge; re-exported for planning/tests)
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile

DEFAULT_MODEL = "sa2va-4b"
DEFAULT_PLAN = "sa2va-official"  # plans/sa2va-official.yaml: the official recipe
SEED_DIR = PLANS_DIR / "seed"
SEED_PLANS = ("baseline", "plan-a", "plan-b", "plan-c", "plan-d")

FLAG_PATHS = {
    "gpus": "hardware.num_gpus", "vram": "hardware.vram_gib", "host_ram": "hardware.host_ram_gib",
    "gpu": "hardware.gpu", "res": "inputs.sam2_resolution", "tiles": "inputs.tiles",
    "text_len": "inputs.text_tokens", "micro_batch": "inputs.micro_batch", "objects": "inputs.objects",
    "frames": "inputs.frames", "zero": "engine.zero_stage", "engine": "engine.kind",
    "ckpt": "components.llm.checkpointing", "mode": "mode", "attention": "attention",
    "precision": "precision.compute", "stack": "stack.kind", "adapter_dtype": "stack.adapter_dtype",
    "allocator": "stack.allocator",
}
FLAGS = (*FLAG_PATHS, "nodes", "offload", "lora_rank")


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``, making the sections on the way."""
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _value(flag: Any) -> Any:
    return flag.value if isinstance(flag, Enum) else flag


def plan_with_defaults(document: dict[str, Any]) -> dict[str, Any]:
    """The recipe defaults, with each section of the document merged in. A component named in the
    document replaces the recipe's entry for it whole (so `llm: {train: frozen}` means frozen)."""
    base = Plan().model_dump(mode="python", exclude_none=True)
    for key, value in document.items():
        if key == "components" and isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        elif key == "engine" and isinstance(value, dict) and value.get("kind") == "fsdp2":
            base[key] = dict(value)  # DeepSpeed's defaults (zero_stage 2, ...) do not apply to FSDP2
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def _overrides(document: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The nested update the flags make to a plan document (None = not given)."""
    overrides: dict[str, Any] = {}
    hardware = document.get("hardware", {})
    nodes = flags.get("nodes")
    if nodes is not None:
        set_dotted(overrides, "hardware.nodes", nodes)
    if flags.get("gpus") is not None:  # --gpus is per node: num_gpus = nodes x gpus
        nodes = nodes if nodes is not None else hardware.get("nodes", 1)
        flags = {**flags, "gpus": flags["gpus"] * nodes if isinstance(nodes, int) else flags["gpus"]}
    elif nodes is not None:
        per_node = hardware.get("num_gpus", 1) // hardware.get("nodes", 1)
        set_dotted(overrides, "hardware.num_gpus", per_node * nodes)
    for flag, path in FLAG_PATHS.items():
        if flags.get(flag) is not None:
            set_dotted(overrides, path, _value(flags[flag]))
    if flags.get("zero") is not None and flags.get("engine") is None:
        set_dotted(overrides, "engine.kind", "deepspeed")
    offload = _value(flags.get("offload"))
    fsdp2 = (_value(flags.get("engine")) or (document.get("engine") or {}).get("kind")) == "fsdp2"
    if offload is not None and fsdp2:
        if offload not in ("none", "all"):
            raise InputError(f"--offload={offload}: FSDP2's CPUOffloadPolicy moves parameters, gradients and the "
                             "optimizer step to the host together; allowed with --engine fsdp2: none, all")
        set_dotted(overrides, "engine.fsdp.offload", offload == "all")
        offload = None
    if offload is not None:
        device = "nvme" if offload == "nvme" else "cpu"
        set_dotted(overrides, "engine.offload_optimizer", "none" if offload == "none" else device)
        set_dotted(overrides, "engine.offload_params", device if offload in ("all", "nvme") else "none")
        if offload in ("all", "nvme") and flags.get("zero") is None:
            set_dotted(overrides, "engine.zero_stage", 3)
    if flags.get("lora_rank") is not None:
        llm = document["components"]["llm"]
        if llm.get("train") != "lora":
            raise InputError(f"--lora-rank={flags['lora_rank']}: needs components.llm.train=lora, not {llm.get('train')}")
        set_dotted(overrides, "components.llm.lora.rank", flags["lora_rank"])
    if flags.get("gpu") is not None and flags.get("vram") is None:  # --gpu alone: the whole card
        from memplan.spec.gpus import get_gpu

        card = get_gpu(flags["gpu"])
        set_dotted(overrides, "hardware.gpu", card.name)
        set_dotted(overrides, "hardware.vram_gib", card.vram_gib)
    return overrides


def plan_from_flags(plan_file: str | Path | None = None, **flags: Any) -> Plan:
    """A Plan from an optional plan file (default: the official recipe) and flag values (None = not
    given); flags win. --engine pytorch drops the plan's DeepSpeed-only engine knobs, --engine fsdp2 keeps only its fsdp section; --gpu alone takes the
    card's CUDA-visible VRAM; a VRAM above the card's is refused (memplan.spec.cards.check_vram)."""
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise TypeError(f"plan_from_flags: unknown flags {unknown}; known: {', '.join(FLAGS)}")
    source = plan_file or DEFAULT_PLAN
    document = plan_with_defaults(plan_document(source))
    if _value(flags.get("engine")) == "pytorch" and isinstance(document.get("engine"), dict):
        document["engine"] = {k: v for k, v in document["engine"].items() if k not in DEEPSPEED_ONLY}
        document["engine"].update(zero_stage=0, offload_optimizer="none", offload_params="none")
    if _value(flags.get("engine")) == "fsdp2" and isinstance(document.get("engine"), dict):
        # --engine fsdp2 replaces the plan's engine: keep only its FSDP2 section, if any
        document["engine"] = {"fsdp": document["engine"]["fsdp"]} if "fsdp" in document["engine"] else {}
    plan = plan_from_document(deep_merge(document, _overrides(document, flags)), printable(source))
    check_vram(gpu=plan.hardware.gpu, vram_gib=plan.hardware.vram_gib)
    return plan


def plan_argument(argument: str) -> str:
    """A plan argument of compare/search: a file path, a name under plans/, or a seed plan's name (plan-a)."""
    path = Path(argument)
    if path.exists() or path.suffix in (".yaml", ".yml", ".json"):
        return argument
    for folder in (PLANS_DIR, SEED_DIR):
        if (folder / f"{argument}.yaml").exists():
            return str(folder / f"{argument}.yaml")
    known = sorted([p.stem for p in PLANS_DIR.glob("*.yaml")] + [p.stem for p in SEED_DIR.glob("*.yaml")])
    raise InputError(f"plan={argument!r}: no such file or plan name; known plans: {', '.join(known)}")


def on_gpu(plan: Plan, gpu_name: str | None, vram: float | None = None) -> Plan:
    """The plan on another catalogued card: its name, and its VRAM unless given."""
    from memplan.spec.gpus import get_gpu

    if gpu_name is None:
        return plan
    spec = get_gpu(gpu_name)
    check_vram(gpu=spec.name, vram_gib=vram if vram is not None else spec.vram_gib)
    hardware = plan.hardware.model_copy(update={"gpu": spec.name, "vram_gib": vram if vram is not None else spec.vram_gib})
    return plan.model_copy(update={"hardware": hardware})


def resolve_profile(name: str | None, plan: Plan | None = None) -> Profile:
    """--model wins, then the plan's own model, then the documented default (sa2va-4b)."""
    return load_profile(name or (plan.model if plan else None) or DEFAULT_MODEL)


def sequence_floor(profile: Profile, plan: Plan) -> tuple[int, int, int]:
    """(images, image tokens per image, objects) one sample's sequence must hold: images x tokens + objects + 1
    (a text token at least) <= inputs.text_tokens, the whole LLM sequence (memplan.probe.shapes builds it so)."""
    inputs = plan.inputs
    images = inputs.tiles + inputs.frames if profile.vision else 0
    per_image = profile.image_tokens_per_tile if profile.vision else 0
    objects = inputs.objects if profile.sam2 or profile.seg_head else 0
    return images, per_image, objects


def check_sequence(profile: Profile, plan: Plan) -> None:
    """A sequence too short for the plan's image tokens is rejected: such a sample cannot be built, so no
    estimate of it means anything."""
    images, per_image, objects = sequence_floor(profile, plan)
    need = images * per_image + objects + 1
    if profile.llm and need > plan.inputs.text_tokens:
        raise InputError(
            f"inputs.text_tokens={plan.inputs.text_tokens}: {images} images x {per_image} image tokens of "
            f"{profile.name} + {objects} objects + 1 need a sequence of at least {need} (--text-len, or fewer --tiles)"
        )


def check_against_profile(profile: Profile, plan: Plan) -> None:
    """Everything about a plan that only the model can refute: check_lora_rank, check_sequence."""
    check_lora_rank(profile, plan)
    check_sequence(profile, plan)


def check_lora_rank(profile: Profile, plan: Plan) -> None:
    """LoRA rank above a wrapped layer's narrowest width is rejected (the update could not be low-rank)."""
    for slot, spec in (("llm", profile.llm), ("vision", profile.vision)):
        part = getattr(plan.components, slot)
        if spec is None or part.train != "lora" or part.lora is None:
            continue
        if slot == "llm":
            narrowest = min(min(d_in, d_out) for _, d_in, d_out in spec.linear_shapes())
        else:  # the vision tower's qkv, proj, fc1, fc2
            narrowest = min(spec.hidden_size, spec.intermediate_size)
        if part.lora.rank > narrowest:
            raise InputError(
                f"components.{slot}.lora.rank={part.lora.rank}: above the narrowest wrapped layer width "
                f"({narrowest}) of {profile.name}; allowed: 1..{narrowest}"
            )
