"""FSDP2's dim-0 padding (memplan.estimate.fsdp.padding) and the census it reads
(memplan/profiles/fsdp_shapes.yaml, scripts/fsdp_shapes.py).

The census must match the modules the probe builds (rebuilt here on meta), and the estimator's
padding of every fully_shard unit must equal what FSDP2's rule gives on those modules: per parameter
S x ceil(d0/S) x rest elements unsharded (torch/distributed/fsdp/_fully_shard/_fsdp_param.py,
_init_sharded_param and init_all_gather_outputs).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from memplan.estimate import fsdp
from memplan.estimate.context import build_context
from memplan.spec.flags import plan_from_flags
from memplan.spec.loading import load_profile
from memplan.spec.shapes import CENSUS_PATH, census

ROOT = Path(__file__).resolve().parents[1]
SA2VA = {"engine": "fsdp2", "text_len": 1024, "tiles": 1, "res": 512, "objects": 2}


def test_padding_formula():
    # a [1, 1025, 1024] position embedding over 1024 ranks: every rank holds all of it
    assert fsdp.padding([(1, 1025 * 1024, 1)], s=1024) == 1023 * 1025 * 1024
    assert fsdp.padding([(896, 896, 2)], s=1024) == 2 * 128 * 896
    assert fsdp.padding([(4096, 7, 3)], s=1024) == 0  # d0 divisible by S: no padding
    assert fsdp.padding([(5, 1, 1)], s=4) == 3  # torch.chunk: chunks of 2, the padded shard is 2 rows


def test_every_shipped_profile_component_has_a_census_entry():
    from memplan.spec.loading import profile_names

    for name in profile_names():
        profile = load_profile(name)
        for slot in ("llm", "vision", "sam2", "seg_head"):
            if getattr(profile, slot) is not None:
                assert census(profile, slot) is not None, (name, slot)


def test_padding_grows_with_the_world_for_sa2va():
    pads = []
    for n in (2, 16, 128, 1024):
        ctx = build_context(load_profile("sa2va-1b"), plan_from_flags(None, gpus=n, **SA2VA))
        _, root = fsdp.unit_sizes(ctx)
        pads.append(root.frozen_padding)
    assert pads == sorted(pads)
    assert pads[-1] >= 1023 * 1025 * 1024  # the InternViT position embedding [1, 1025, 1024] alone


def _torch_modules():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    sys.path.insert(0, str(ROOT / "scripts"))
    import fsdp_shapes  # noqa: E402

    return fsdp_shapes


def test_shipped_census_matches_the_modules():
    fsdp_shapes = _torch_modules()
    assert CENSUS_PATH.read_text() == fsdp_shapes.render(fsdp_shapes.census()), \
        "memplan/profiles/fsdp_shapes.yaml is stale: run python scripts/fsdp_shapes.py"


def _module_padding(unit, s: int, seen: set[int]) -> int:
    padding = 0
    for module in unit if isinstance(unit, list) else [unit]:
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            d0 = p.shape[0] if p.dim() else 1
            padding += (s * math.ceil(d0 / s) - d0) * (p.numel() // d0)
    return padding


@pytest.mark.parametrize("world", [16, 1024])
def test_unit_padding_matches_fully_shard_on_the_probe_model(world):
    _torch_modules()
    import torch

    from memplan.probe.apply import apply_plan
    from memplan.probe.build import build_model
    from memplan.probe.fsdp import shard_units

    profile = load_profile("sa2va-1b")
    plan = plan_from_flags(None, gpus=world, **SA2VA)
    with torch.device("meta"):
        model = apply_plan(build_model(profile, plan), plan)
    seen: set[int] = set()
    measured = [_module_padding(u, world, seen) for u in shard_units(model, plan)]
    measured.append(_module_padding(model, world, seen))
    units, root = fsdp.unit_sizes(build_context(profile, plan))
    estimated = [u.frozen_padding + u.trainable_padding for u in [*units, root]]
    assert len(estimated) == len(measured)
    assert estimated[:-2] == measured[:-2]  # ViT layers, embeddings, decoder layers
    # the SAM2 encoder and the root together (the probe files one 256-element SAM2 tensor outside
    # vision_encoder, which the profile counts in sam2_encoder)
    assert sum(estimated[-2:]) == sum(measured[-2:])
