"""Every shipped profile loads, cites its source, adds up, and matches its published parameter counts.

Published figures come from docs/sa2va-reference.md (the Sa2VA variants table and the SAM2 table)
and, for the InternVL2.5 models memplan also ships, from their model cards (InternVL2.5-1B 938M,
-4B 3.7B, -8B 8.1B). Published totals are rounded or truncated to the printed precision (SAM2-T:
38,962,417 prints as 38.9M, Qwen2.5-VL-7B's ViT 676,550,144 as 677M), so a count matches when
either rounding or truncation gives the printed digits.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

import pytest
import yaml

from memplan.spec.loading import COMPONENTS_DIR, PROFILES_DIR, load_profile, profile_names
from memplan.spec.profile import Profile

UNITS = {"K": 10**3, "M": 10**6, "B": 10**9}

# name: {"total": ..., "llm": ..., "vision": ...}; "vision" is the tower as published: InternViT
# alone, the Qwen towers with their merger (transformers' `visual` module holds it).
PUBLISHED: dict[str, dict[str, str]] = {
    # the Sa2VA variants and their published totals (model cards)
    "sa2va-1b": {"total": "1.03B", "llm": "0.494B", "vision": "304M"},
    "sa2va-4b": {"total": "3.63B", "llm": "3.09B", "vision": "304M"},
    "sa2va-8b": {"total": "8.32B", "llm": "7.74B", "vision": "304M"},
    "sa2va-26b": {"total": "25.8B", "llm": "19.86B", "vision": "5.54B"},
    "sa2va-internvl3-2b": {"total": "2.08B", "llm": "1.54B", "vision": "304M"},
    "sa2va-internvl3-8b": {"total": "8.18B", "llm": "7.61B", "vision": "304M"},
    "sa2va-internvl3-14b": {"total": "15.37B", "llm": "14.77B", "vision": "304M"},
    "sa2va-qwen2.5-vl-3b": {"total": "3.98B", "llm": "3.09B", "vision": "669M"},
    "sa2va-qwen2.5-vl-7b": {"total": "8.53B", "llm": "7.62B", "vision": "677M"},
    "sa2va-qwen3-vl-4b": {"total": "4.67B", "llm": "4.02B", "vision": "415M"},
    # InternVL2.5 model cards / hub counts (no SAM2)
    "internvl2.5-1b": {"total": "938M", "vision": "304M"},
    "internvl2.5-4b": {"total": "3.7B", "vision": "304M"},
    "internvl2.5-8b": {"total": "8.1B", "llm": "7.74B", "vision": "304M"},
    # components: the component model cards and config.json files (InternViT, Qwen2.5, SAM2)
    "internvit-300m": {"total": "304M"},
    "internvit-6b": {"total": "5.54B"},
    "qwen2.5-vl-vit": {"total": "669M"},
    "qwen2.5-vl-vit-7b": {"total": "677M"},
    "qwen3-vl-vit": {"total": "415M"},
    "qwen2.5-0.5b": {"total": "494M"},
    "qwen2.5-1.5b": {"total": "1.54B"},
    "qwen2.5-3b": {"total": "3.09B"},
    "qwen2.5-7b": {"total": "7.61B"},
    "qwen2.5-14b": {"total": "14.77B"},
    "internlm2.5-7b": {"total": "7.74B"},
    "internlm2.5-20b": {"total": "19.86B"},
    "qwen2.5-vl-3b-text": {"total": "3.09B"},
    "qwen2.5-vl-7b-text": {"total": "7.62B"},
    "qwen3-vl-4b-text": {"total": "4.02B"},
    "sam2-hiera-tiny": {"total": "38.9M", "trunk": "26.85M"},
    "sam2-hiera-small": {"total": "46.0M", "trunk": "33.95M"},
    "sam2-hiera-base-plus": {"total": "80.8M", "trunk": "68.68M"},
    "sam2-hiera-large": {"total": "224.4M", "trunk": "212.15M"},
}

# the Sa2VA variants (model cards, config.json): LLM layers / hidden / heads / kv / mlp / vocab, tied head
SA2VA_LLM = {
    "sa2va-1b": (24, 896, 14, 2, 4864, 151674, True),
    "sa2va-4b": (36, 2048, 16, 2, 11008, 151674, True),
    "sa2va-8b": (32, 4096, 32, 8, 14336, 92553, False),
    "sa2va-26b": (48, 6144, 48, 8, 16384, 92553, False),
    "sa2va-internvl3-2b": (28, 1536, 12, 2, 8960, 151674, True),
    "sa2va-internvl3-8b": (28, 3584, 28, 4, 18944, 151674, False),
    "sa2va-internvl3-14b": (48, 5120, 40, 8, 13824, 151674, False),
    "sa2va-qwen2.5-vl-3b": (36, 2048, 16, 2, 11008, 151936, True),
    "sa2va-qwen2.5-vl-7b": (28, 3584, 28, 4, 18944, 152064, False),
    "sa2va-qwen3-vl-4b": (36, 2560, 32, 8, 9728, 151936, True),
}


def matches_published(count: int, printed: str) -> bool:
    """True when rounding or truncating ``count`` to the printed precision gives the printed value."""
    number, unit = Decimal(printed[:-1]), UNITS[printed[-1]]
    exponent = number.as_tuple().exponent
    scaled = Decimal(count) / unit
    return any(scaled.quantize(Decimal(1).scaleb(exponent), rounding=mode) == number for mode in (ROUND_HALF_UP, ROUND_FLOOR))


def vision_as_published(profile: Profile) -> int:
    """The vision tower as its model card counts it: Qwen towers include the merger (projector)."""
    count = profile.vision.param_count()
    if profile.vision.architecture != "internvit" and profile.projector is not None:
        count += profile.projector.param_count()
    return count


def test_matches_published_reads_precision():
    assert matches_published(224_446_561, "224.4M")
    assert matches_published(38_962_417, "38.9M")  # truncated
    assert matches_published(676_550_144, "677M")  # rounded
    assert not matches_published(802_000_000, "0.9B")


@pytest.mark.parametrize("name", profile_names())
def test_profile_loads(name):
    profile = load_profile(name)
    assert isinstance(profile, Profile)
    assert profile.name == name


@pytest.mark.parametrize("name", profile_names())
def test_profile_cites_its_source(name):
    path = next(p for p in (PROFILES_DIR / f"{name}.yaml", COMPONENTS_DIR / f"{name}.yaml") if p.exists())
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert document.get("source", "").startswith("https://"), f"{name}: source must link the config it came from"
    assert document.get("description"), f"{name}: description missing"


@pytest.mark.parametrize("name", profile_names())
def test_param_groups_add_up(name):
    profile = load_profile(name)
    specs = [s for s in (profile.llm, profile.vision, profile.projector, profile.sam2, profile.seg_head) if s]
    groups_total = sum(sum(spec.param_groups().values()) for spec in specs)
    assert groups_total == sum(profile.component_params().values()) == profile.param_count()
    assert all(isinstance(v, int) and v >= 0 for spec in specs for v in spec.param_groups().values())


@pytest.mark.parametrize("name", profile_names())
def test_published_counts(name):
    assert name in PUBLISHED, f"{name}: add its published parameter counts (and their source) to PUBLISHED"
    profile = load_profile(name)
    published = PUBLISHED[name]
    checks = {"total": profile.param_count()}
    if "llm" in published:
        checks["llm"] = profile.llm.param_count()
    if "vision" in published:
        checks["vision"] = vision_as_published(profile)
    if "trunk" in published:
        checks["trunk"] = sum(profile.sam2.trunk_groups().values())
    for key, count in checks.items():
        assert matches_published(count, published[key]), f"{name}.{key}: {count:,} does not print as {published[key]}"


@pytest.mark.parametrize("name", sorted(SA2VA_LLM))
def test_sa2va_llm_shapes(name):
    llm = load_profile(name).llm
    shape = (llm.num_layers, llm.hidden_size, llm.num_heads, llm.num_kv_heads, llm.intermediate_size,
             llm.vocab_size, llm.tie_word_embeddings)
    assert shape == SA2VA_LLM[name]


@pytest.mark.parametrize("name", sorted(SA2VA_LLM))
def test_sa2va_variants_carry_sam2_large_and_seg_head(name):
    profile = load_profile(name)
    assert profile.sam2 == load_profile("sam2-hiera-large").sam2
    assert (profile.seg_head.input_size, profile.seg_head.output_size) == (profile.llm.hidden_size, 256)


def test_sam2_sizes_share_decoder_and_memory():
    """Mask decoder (4.215M), prompt encoder (6.2K) and memory modules are one architecture at every size."""
    sizes = [load_profile(f"sam2-hiera-{size}").sam2 for size in ("tiny", "small", "base-plus", "large")]
    assert {(s.mask_decoder_params, s.prompt_encoder_params, s.memory_params) for s in sizes} == {(4_215_109, 6_220, 7_505_521)}
    assert [s.window_pos_embed_bkg for s in sizes] == [(7, 7), (7, 7), (14, 14), (7, 7)]


def test_every_sa2va_variant_is_shipped():
    assert set(SA2VA_LLM) <= set(profile_names())
