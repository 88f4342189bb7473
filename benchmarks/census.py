"""Saved-tensor census: bytes that autograd keeps for backward, per token and per layer, measured on
the real transformers/peft modules (CPU, bf16), then fitted exactly as integer coefficients of the
layer's widths. The estimator's activation formulas (memplan/estimate/activations.py) state these
coefficients; rerun this script after a transformers or peft upgrade and compare its output with them.
benchmarks/census_paths.py adds the InternVL vision layer, eager attention, the logits/loss path and
the peft/Trainer paths (printed last, beside the estimator's constants); tests/test_census.py checks
a fast subset of both against memplan/estimate/coefficients.py.

Run: python benchmarks/census.py   (a few minutes on 2 CPU cores; --paths: the paths census only)
"""

from __future__ import annotations

import json
import sys

import torch


def _saved_bytes(run) -> int:
    """Bytes of distinct storages packed by autograd during run(), excluding parameters."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        params = run()
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    return sum(v for k, v in seen.items() if k not in param_ptrs)


def llm_layer_bytes(mode: str, h: int, heads: int, head_dim: int, kv: int, ffn: int, rank: int,
                    dropout: float, tokens: int, layers: int, upcast: bool = False,
                    adapters_fp32: bool = False, attn: str = "sdpa", autocast: bool = False) -> int:
    """Saved bytes of a Qwen2 decoder (layers x tokens) under one training mode.

    mode frozen/full/lora; adapters_fp32: peft's default autocast_adapter_dtype keeps LoRA weights in
    fp32 beside a bf16 base (plain PyTorch); False: everything bf16, as DeepSpeed's bf16 engine casts
    the whole module. upcast: fp32 base weights under torch.autocast (the recipe's kbit preparation).
    autocast: torch.autocast over a bf16 model (Trainer's bf16=True). attn: sdpa or eager."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=h, intermediate_size=ffn, num_attention_heads=heads, head_dim=head_dim,
                         num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=64,
                         attn_implementation=attn)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"]))
        if not adapters_fp32:
            model = model.to(torch.bfloat16)
    elif mode == "frozen":
        model.requires_grad_(False)
    if upcast:
        for p in model.parameters():
            p.data = p.data.float()
    decoder = model.get_decoder()
    x = torch.randn(1, tokens, h, dtype=torch.float32 if upcast else torch.bfloat16, requires_grad=True)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=upcast or autocast):
            decoder(inputs_embeds=x)
        return list(model.parameters())

    return _saved_bytes(run)


def fit(rows: list[tuple[list[float], float]], names: list[str]) -> dict[str, float]:
    a = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    b = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    solution = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    residual = (a @ solution - b).abs().max().item()
    out = {n: round(v, 3) for n, v in zip(names, solution.tolist())}
    out["max_residual_bytes"] = round(residual, 1)
    return out


LLM_SHAPES = [  # (h, heads, head_dim, kv, ffn, rank)
    (128, 4, 32, 2, 384, 8), (192, 6, 32, 3, 512, 16), (256, 4, 64, 2, 768, 8), (256, 8, 16, 4, 640, 32),
    (320, 5, 64, 1, 896, 16), (384, 12, 16, 6, 1024, 8), (448, 7, 48, 7, 1152, 24), (512, 8, 32, 2, 1280, 16),
]


def llm_census(mode: str, dropout: float = 0.0, upcast: bool = False, adapters_fp32: bool = False) -> dict[str, float]:
    """Per-token-per-layer coefficients on [h, q, kv, ffn, heads, rank] and per-token model constants."""
    rows = []
    for h, heads, head_dim, kv, ffn, rank in LLM_SHAPES:
        q, kvd = heads * head_dim, kv * head_dim
        per = {}
        for layers in (1, 2):
            t1 = llm_layer_bytes(mode, h, heads, head_dim, kv, ffn, rank, dropout, 32, layers, upcast, adapters_fp32)
            t2 = llm_layer_bytes(mode, h, heads, head_dim, kv, ffn, rank, dropout, 64, layers, upcast, adapters_fp32)
            per[layers] = (t2 - t1) / 32  # per token
        per_layer = per[2] - per[1]
        rows.append(([h, q, kvd, ffn, heads, rank if mode == "lora" else 0], per_layer))
    names = ["h", "q", "kv", "ffn", "heads", "rank"]
    return fit(rows, names)


def paths_report() -> dict[str, object]:
    """benchmarks/census_paths.py's measurements beside the estimator's constants for the same shapes."""
    import census_paths as paths

    from memplan.estimate import attention, coefficients

    measured = paths.report()
    expected: dict[str, object] = {}
    for shape in paths.SHAPES:
        key, widths = "x".join(map(str, shape)), paths.widths(shape)

        def dot(*tables):
            return sum(v * widths[n] for table in tables for n, v in table.items())

        frozen = coefficients.LLM_FROZEN
        expected[f"llm/frozen/{key}"] = dot(frozen)
        expected[f"llm/lora-bf16/{key}"] = dot(frozen, coefficients.LORA_BF16)
        expected[f"llm/lora-fp32/{key}"] = dot(frozen, coefficients.LORA_FP32)
        expected[f"llm/lora-fp32-autocast/{key}"] = dot(frozen, coefficients.LORA_UPCAST)
        repeated = paths.widths(shape, eager_repeat=True)["kv"]
        expected[f"llm/frozen-eager/{key}"] = {
            "per_head_pair": attention.EAGER_SAVED_PER_PAIR,
            "per_token": dot(frozen) + 4 * (repeated - widths["kv"]) - 2 * widths["q"] - 4 * widths["heads"]}
    for h, heads, ffn in paths.VIT_SHAPES:
        key, widths = f"{h}x{heads}x{ffn}", {"h": h, "heads": heads, "ffn": ffn}
        expected[f"vit/frozen-with-graph/{key}"] = sum(v * widths[n] for n, v in coefficients.VIT_FROZEN.items())
        expected[f"vit/full/{key}"] = sum(v * widths[n] for n, v in coefficients.VIT_FULL.items())
    expected["loss/per-token-per-vocab"] = {"forward_peak": coefficients.LOGITS_FORWARD_PEAK,
                                            "saved": coefficients.LOGITS_SAVED,
                                            "backward_extra": coefficients.LOGITS_BACKWARD_EXTRA}
    return {key: {"measured": value, "tables": expected.get(key)} for key, value in measured.items()}


if __name__ == "__main__":
    torch.manual_seed(0)
    if "--paths" in sys.argv:
        json.dump(paths_report(), sys.stdout, indent=1)
        sys.exit(0)
    results = {}
    for mode, dropout, upcast, fp32 in [
        ("frozen", 0.0, False, False), ("full", 0.0, False, False),
        ("lora", 0.0, False, False), ("lora", 0.05, False, False),
        ("lora", 0.0, False, True), ("lora", 0.05, False, True),
        ("frozen", 0.0, True, False), ("lora", 0.05, True, True),
    ]:
        key = f"llm/{mode}/dropout={dropout}/upcast={upcast}/adapters_fp32={fp32}"
        results[key] = llm_census(mode, dropout, upcast, fp32)
        print(key, results[key], flush=True)
    results["paths"] = paths_report()
    json.dump(results, sys.stdout if len(sys.argv) < 2 else open(sys.argv[1], "w"), indent=1)
