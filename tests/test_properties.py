"""Properties of the estimate over random valid plans (hypothesis), for a few shipped profiles.

- more GPUs never raise the per-GPU model states under ZeRO 1-3;
- a larger resolution, more tiles, text tokens or objects never lower the activations;
- optimizer or parameter offload never raises the peak allocated memory;
- checkpointing never raises the activations;
- the peak breakdown sums exactly to peak_allocated_bytes - allocated_constant_bytes;
- the same input always gives the same output.
"""

from __future__ import annotations

import copy
import os

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from memplan.estimate.peak import estimate
from memplan.estimate import gradients, optimizer, weights
from memplan.estimate.context import build_context
from memplan.estimate.overhead import Calibration
from memplan.spec.loading import load_profile
from memplan.estimate.phases import ACTIVATION_ORDER
from memplan.spec.plan import Plan

PROFILES = ("sa2va-1b", "sa2va-4b", "qwen2.5-0.5b", "sam2-hiera-large", "internvl2.5-1b")
EXAMPLES = int(os.environ.get("MEMPLAN_PROPERTY_EXAMPLES", "100"))  # e.g. 2000 for a long local run
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CALIBRATION = Calibration(allocated_constant_bytes=123_456_789, reserved_ratio=0.07, context_bytes=600 << 20)


# --------------------------------------------------------------------------- strategies


@st.composite
def engines(draw, stages=(0, 1, 2, 3), deepspeed=None):
    kind = draw(st.sampled_from(["deepspeed", "pytorch"])) if deepspeed is None else ("deepspeed" if deepspeed else "pytorch")
    if kind == "pytorch":
        return {"kind": "pytorch", "zero_stage": 0}
    stage = draw(st.sampled_from(stages))
    engine = {"kind": "deepspeed", "zero_stage": stage, "overlap_comm": draw(st.sampled_from([None, True, False])),
              "contiguous_gradients": draw(st.booleans()),
              "reduce_bucket_size": draw(st.sampled_from([50_000_000, 200_000_000, 500_000_000]))}
    if stage >= 1:
        engine["offload_optimizer"] = draw(st.sampled_from(["none", "none", "cpu", "nvme"]))
    if stage == 3:
        engine["offload_params"] = draw(st.sampled_from(["none", "none", "cpu", "nvme"]))
        engine["stage3_max_live_parameters"] = draw(st.sampled_from([10_000_000, 1_000_000_000]))
        engine["stage3_prefetch_bucket_size"] = draw(st.sampled_from([0, 50_000_000]))
    return engine


def component(train=("frozen", "full")):
    return st.fixed_dictionaries({"train": st.sampled_from(train), "checkpointing": st.booleans()})


@st.composite
def llm_plans(draw):
    train = draw(st.sampled_from(["frozen", "full", "lora", "lora"]))
    plan = {"train": train, "checkpointing": draw(st.booleans())}
    if train == "lora":
        targets = draw(st.sampled_from([None, ["q_proj", "v_proj"], ["gate_proj", "up_proj", "down_proj"]]))
        plan["lora"] = {"rank": draw(st.sampled_from([1, 8, 64, 128])), "dropout": draw(st.sampled_from([0.0, 0.05])),
                        "targets": targets}
    if train != "frozen":
        plan["modules_to_save"] = draw(st.sampled_from([[], ["lm_head"], ["embed_tokens", "lm_head"]]))
    return plan


@st.composite
def plan_documents(draw, mode=None, **engine_options):
    engine = draw(engines(**engine_options))
    deepspeed = engine["kind"] == "deepspeed"
    kinds = ["adamw", "adam8bit", "sgd"] + (["fused_adam"] if deepspeed else [])
    if engine.get("offload_optimizer", "none") != "none":
        kinds.append("cpu_adam")
    vision = draw(st.sampled_from(["frozen", "frozen", "full", "lora"]))
    return {
        "name": "random",
        "mode": mode or draw(st.sampled_from(["train", "train", "train", "inference"])),
        "hardware": {"num_gpus": draw(st.integers(1, 16)), "vram_gib": draw(st.sampled_from([16, 24, 48, 80]))},
        "engine": engine,
        "precision": {"compute": draw(st.sampled_from(["bf16", "fp16", "fp32"])),
                      "master_weights": draw(st.booleans()), "llm_fp32_upcast": draw(st.booleans())},
        "optimizer": {"kind": draw(st.sampled_from(kinds)), "foreach": draw(st.booleans())},
        "attention": draw(st.sampled_from(["sdpa", "flash", "eager"])),
        "components": {
            "llm": draw(llm_plans()),
            "vision": {"train": vision, "checkpointing": draw(st.booleans()),
                       **({"lora": {"rank": draw(st.sampled_from([4, 16]))}} if vision == "lora" else {})},
            "projector": draw(component()),
            "sam2_encoder": draw(component()),
            "sam2_decoder": draw(component()),
            "seg_head": draw(component()),
        },
        "inputs": {
            "micro_batch": draw(st.integers(1, 4)),
            "text_tokens": draw(st.integers(1, 8192)),
            "tiles": draw(st.integers(0, 16)),
            "frames": draw(st.integers(0, 8)),
            "sam2_resolution": 64 * draw(st.integers(1, 32)),
            "objects": draw(st.integers(0, 8)),
            "output_hidden_states": draw(st.booleans()),
        },
    }


profiles = st.sampled_from(PROFILES).map(load_profile)


def plan(document) -> Plan:
    return Plan.model_validate(document)


def changed(document, path: str, value):
    out = copy.deepcopy(document)
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return out


# --------------------------------------------------------------------------- measures


def model_states(profile, document) -> int:
    """Per-GPU weights + trainable weights + gradients + optimizer state + fp32 masters."""
    ctx = build_context(profile, plan(document))
    return sum(
        weights.frozen_weight_bytes(ctx, c) + weights.trainable_weight_bytes(ctx, c) + gradients.gradient_bytes(ctx, c)
        + optimizer.optimizer_state_bytes(ctx, c) + optimizer.master_weight_bytes(ctx, c)
        for c in ctx.parts
    )


def activations(profile, document) -> int:
    """Saved activations of every component (the estimators the phases sum)."""
    ctx = build_context(profile, plan(document))
    return sum(fn(ctx) for c, fn in ACTIVATION_ORDER if c in ctx.parts)


def peak_allocated(profile, document) -> int:
    return estimate(profile, plan(document), CALIBRATION).peak_allocated_bytes


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(profiles, plan_documents(mode="train", stages=(1, 2, 3), deepspeed=True), st.integers(1, 64))
def test_more_gpus_never_raise_model_states_under_zero(profile, document, extra):
    fewer = model_states(profile, document)
    gpus = min(document["hardware"]["num_gpus"] + extra, 1024)
    assert model_states(profile, changed(document, "hardware.num_gpus", gpus)) <= fewer


GROWTH = st.sampled_from([
    ("inputs.sam2_resolution", 64, 4096),
    ("inputs.tiles", 1, 64),
    ("inputs.text_tokens", 1, 1_048_576),
    ("inputs.objects", 1, 64),
    ("inputs.frames", 1, 256),
    ("inputs.micro_batch", 1, 1024),
])


@SETTINGS
@given(profiles, plan_documents(), GROWTH, st.integers(1, 8))
def test_larger_inputs_never_lower_activations(profile, document, growth, steps):
    path, step, cap = growth
    current = document["inputs"][path.split(".")[1]]
    larger = min(current + steps * step, cap)
    before = activations(profile, document)
    assert activations(profile, changed(document, path, larger)) >= before


def lm_head_copy(document) -> bool:
    llm = document["components"]["llm"]
    return llm["train"] != "frozen" and "lm_head" in llm.get("modules_to_save", [])


@SETTINGS
@given(profiles, plan_documents(mode="train", stages=(1, 2, 3), deepspeed=True), st.sampled_from(["cpu", "nvme"]))
def test_optimizer_offload_never_raises_peak_allocated(profile, document, device):
    assume(not lm_head_copy(document))  # the lm_head copy case is the test below
    base = changed(document, "engine.offload_optimizer", "none")
    if base["optimizer"]["kind"] == "cpu_adam":
        base["optimizer"]["kind"] = "adamw"
    assert peak_allocated(profile, changed(base, "engine.offload_optimizer", device)) <= peak_allocated(profile, base)


OFFLOAD_COUNTEREXAMPLE = {  # found by the test below (hypothesis, shrunk); fixed in phases.backward_phase
    "mode": "train", "hardware": {"num_gpus": 7, "vram_gib": 16},
    "engine": {"kind": "deepspeed", "zero_stage": 2, "contiguous_gradients": False, "reduce_bucket_size": 50_000_000},
    "precision": {"compute": "bf16", "master_weights": False, "llm_fp32_upcast": False},
    "optimizer": {"kind": "adamw", "foreach": False},
    "components": {"llm": {"train": "lora", "lora": {"rank": 1, "dropout": 0.0}, "modules_to_save": ["lm_head"]},
                   "vision": {"train": "frozen"}, "projector": {"train": "frozen"}, "sam2_encoder": {"train": "frozen"},
                   "sam2_decoder": {"train": "frozen"}, "seg_head": {"train": "frozen"}},
    "inputs": {"micro_batch": 1, "text_tokens": 1, "tiles": 0, "frames": 0, "sam2_resolution": 64, "objects": 0,
               "output_hidden_states": False},
}


@SETTINGS
@example(profile=load_profile("sa2va-1b"), document=OFFLOAD_COUNTEREXAMPLE, device="cpu")
@given(profiles, plan_documents(mode="train", stages=(1, 2, 3), deepspeed=True), st.sampled_from(["cpu", "nvme"]))
def test_optimizer_offload_never_raises_peak_allocated_with_an_lm_head_copy(profile, document, device):
    assume(lm_head_copy(document))
    base = changed(document, "engine.offload_optimizer", "none")
    if base["optimizer"]["kind"] == "cpu_adam":
        base["optimizer"]["kind"] = "adamw"
    assert peak_allocated(profile, changed(base, "engine.offload_optimizer", device)) <= peak_allocated(profile, base)


@SETTINGS
@given(profiles, plan_documents(mode="train", stages=(3,), deepspeed=True), st.sampled_from(["cpu", "nvme"]))
def test_parameter_offload_never_raises_peak_allocated(profile, document, device):
    base = changed(document, "engine.offload_params", "none")
    assert peak_allocated(profile, changed(base, "engine.offload_params", device)) <= peak_allocated(profile, base)


@SETTINGS
@given(profiles, plan_documents(), st.sampled_from(["llm", "vision"]))
def test_checkpointing_never_raises_activations(profile, document, part):
    without = changed(document, f"components.{part}.checkpointing", False)
    with_ckpt = changed(document, f"components.{part}.checkpointing", True)
    assert activations(profile, with_ckpt) <= activations(profile, without)


@SETTINGS
@given(profiles, plan_documents())
def test_breakdown_sums_to_peak_allocated_less_the_constant(profile, document):
    result = estimate(profile, plan(document), CALIBRATION)
    total = sum(term.bytes for term in result.breakdown())
    assert total == result.peak_allocated_bytes - result.calibration.allocated_constant_bytes
    assert sum(row["bytes"] for row in result.to_dict()["breakdown"]) == total


@SETTINGS
@given(profiles, plan_documents())
def test_same_input_same_output(profile, document):
    first = estimate(profile, plan(document), CALIBRATION).to_dict()
    second = estimate(profile, plan(copy.deepcopy(document)), CALIBRATION).to_dict()
    assert first == second
