"""The user-stack probes on one CUDA GPU: Trainer (plain and DeepSpeed ZeRO-2 through Trainer's
integration) and the custom loop, on the tiny InternVL and text models. Skipped without CUDA."""

from __future__ import annotations

import pytest

from memplan.spec.plan import Plan

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from test_probe_stacks_cpu import INPUTS, RANK, check_record, stack_plan, tiny_internvl, tiny_text  # noqa: E402


def run(profile, plan: Plan, steps: int = 3) -> dict:
    from memplan.probe.distributed import release_distributed
    from memplan.probe.run import run_probe

    try:
        return run_probe(profile, plan, steps=steps, device="cuda", command="pytest")
    finally:
        release_distributed()


def test_trainer_on_cuda_fp32_adapters_and_vision_hooks():
    record = run(tiny_internvl(), stack_plan("hf-trainer", inputs={**INPUTS, "text_tokens": 256}))
    rank = check_record(record, steps=3)
    stack = rank["stack"]
    assert stack["trainer_state"]["global_step"] == 3
    assert stack["trainable_dtypes"]["float32"] == tiny_internvl().llm.lora_params(RANK, None)
    assert any(name.endswith("vision_tower.embeddings.patch_embeddings") for name in stack["input_grad_hooks"])
    phases = rank["phases"]
    assert all(r["device_used_bytes"] >= r["max_reserved_bytes"] >= r["max_allocated_bytes"] for r in phases.values())


def test_trainer_with_deepspeed_zero2():
    pytest.importorskip("deepspeed")
    plan = stack_plan("hf-trainer", engine={"kind": "deepspeed", "zero_stage": 2}, inputs={**INPUTS, "tiles": 0})
    rank = check_record(run(tiny_text(), plan), steps=3)
    assert rank["stack"]["trainer_state"]["global_step"] == 3
    assert rank["categories"]["master_weights"] > 0  # DeepSpeed's fp32 partitions


def test_custom_loop_on_cuda_keeps_outputs():
    plan = stack_plan("custom-loop", inputs={**INPUTS, "tiles": 0, "text_tokens": 512})
    kept = check_record(run(tiny_text(), plan), steps=3)
    plan = stack_plan("custom-loop", stack={"keeps_outputs": False}, inputs={**INPUTS, "tiles": 0, "text_tokens": 512})
    dropped = check_record(run(tiny_text(), plan), steps=3)
    vocab = tiny_text().llm.vocab_size
    logits = 2 * 512 * vocab  # bf16 logits held by ``out`` through the backward
    assert kept["phases"]["backward"]["max_allocated_bytes"] - dropped["phases"]["backward"]["max_allocated_bytes"] >= logits // 2
