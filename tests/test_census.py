"""The saved-tensor census (benchmarks/census.py, benchmarks/census_paths.py), a fast subset, against
the constants the estimator uses (memplan/estimate/coefficients.py, memplan/estimate/attention.py).

Each case measures what the real transformers/peft modules save per token per layer on one shape
and compares it with the table's prediction for that shape. Every case must differ from its
prediction by one and the same per-layer constant, and that constant must be 0 or 8 bytes per token
(8: the fp32 per-token statistics of the layer's two norms, which transformers 5.2x saves beside
the norm inputs the tables count; the tables were fitted without them). A drift of any width
coefficient moves one case, or one shape, away from the others and fails the test.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import pytest

from memplan.estimate import attention, coefficients

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import census_paths  # noqa: E402

LLM_SHAPE = (128, 4, 32, 2, 384, 8)  # h, heads, head_dim, kv heads, FFN, LoRA rank
VIT_SHAPES = [(64, 4, 128), (96, 6, 256)]  # h, heads, FFN
ALLOWED_CONSTANTS = (0, 8)


def dot(table: dict[str, int], widths: dict[str, int]) -> int:
    return sum(value * widths[name] for name, value in table.items())


def add(*tables: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in tables:
        for name, value in table.items():
            out[name] = out.get(name, 0) + value
    return out


@lru_cache(maxsize=None)
def measured_llm(mode: str, adapters_fp32: bool = False, autocast: bool = False) -> float:
    return census_paths.llm_per_token_layer(mode, LLM_SHAPE, adapters_fp32=adapters_fp32, autocast=autocast)


def llm_cases() -> list[tuple[str, float, int]]:
    """(case, measured, predicted) per token per layer for the LLM paths."""
    widths = census_paths.widths(LLM_SHAPE)
    frozen = coefficients.LLM_FROZEN
    eager = census_paths.eager_layer(LLM_SHAPE)
    eager_widths = census_paths.widths(LLM_SHAPE, eager_repeat=True)
    eager_predicted = dot(frozen, widths) + (4 * (eager_widths["kv"] - widths["kv"]) - 2 * widths["q"]
                                             - 4 * widths["heads"])
    return [
        ("frozen", measured_llm("frozen"), dot(frozen, widths)),
        ("lora bf16 adapters", measured_llm("lora"), dot(add(frozen, coefficients.LORA_BF16), widths)),
        ("lora fp32 adapters", measured_llm("lora", True), dot(add(frozen, coefficients.LORA_FP32), widths)),
        # Trainer's path: fp32 adapters on a bf16 model under torch.autocast (bf16=True)
        ("lora fp32 adapters, autocast", measured_llm("lora", True, True),
         dot(add(frozen, coefficients.LORA_UPCAST), widths)),
        ("eager, per token", eager["per_token"], eager_predicted),
    ]


def test_llm_paths_match_the_tables():
    cases = llm_cases()
    offsets = {name: measured - predicted for name, measured, predicted in cases}
    assert len(set(offsets.values())) == 1, offsets
    assert next(iter(offsets.values())) in ALLOWED_CONSTANTS, offsets


def test_eager_attention_keeps_six_bytes_per_head_per_pair():
    assert census_paths.eager_layer(LLM_SHAPE)["per_head_pair"] == attention.EAGER_SAVED_PER_PAIR


@pytest.mark.parametrize("mode, table", [("frozen", coefficients.VIT_FROZEN), ("full", coefficients.VIT_FULL)])
def test_vit_layer_matches_the_tables(mode, table):
    """InternVLVisionLayer: frozen with a graph (the enable_input_require_grads hook) and fully trained."""
    offsets = []
    for h, heads, ffn in VIT_SHAPES:
        measured = census_paths.vit_per_token_layer(mode, (h, heads, ffn))
        offsets.append(measured - dot(table, {"h": h, "ffn": ffn, "heads": heads}))
    assert len(set(offsets)) == 1 and offsets[0] in ALLOWED_CONSTANTS, offsets


def test_loss_path_per_token_per_vocab_entry():
    per = census_paths.loss_per_token_vocab()
    assert per == {"forward_peak": coefficients.LOGITS_FORWARD_PEAK, "saved": coefficients.LOGITS_SAVED,
                   "backward_extra": coefficients.LOGITS_BACKWARD_EXTRA}
