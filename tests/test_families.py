"""Each architecture-family adapter holds both directions, and they agree: for every component of
every shipped profile, spec -> transformers config (what the probe builds) -> spec (what import
reads) gives the spec back, and the model built from that config on the meta device has the spec's
parameter count per module kind, counted by the same rules the import uses."""

from __future__ import annotations

import pytest

from memplan.integrations.huggingface.families import internvit, llm, qwen_vit, sam2
from memplan.integrations.huggingface.importing import count_parameters
from memplan.spec.loading import load_profile, profile_names

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

ATTN = "sdpa"


def _components(slot: str, architectures: tuple[str, ...] | None = None) -> list:
    """(profile name, profile) for each distinct spec of ``slot`` in the shipped profiles."""
    seen, out = set(), []
    for name in profile_names():
        profile = load_profile(name)
        spec = getattr(profile, slot)
        if spec is None or (architectures and spec.architecture not in architectures) or spec in seen:
            continue
        seen.add(spec)
        out.append(pytest.param(name, profile, id=name))
    return out


def _on_meta(build):
    with torch.device("meta"):
        return build()


def _nonzero(groups: dict[str, int]) -> dict[str, int]:
    return {kind: count for kind, count in groups.items() if count}


@pytest.mark.parametrize(("name", "profile"), _components("llm"))
def test_llm_round_trip(name, profile):
    spec = profile.llm
    config = llm.to_config(spec, attn=ATTN, max_positions=4096)
    assert llm.spec_from_config(config, spec.architecture, config.tie_word_embeddings) == spec
    built = _on_meta(lambda: llm.build(spec, attn=ATTN, max_positions=4096))
    assert count_parameters(built, llm.rules("model."), name)["llm"] == _nonzero(spec.param_groups())


@pytest.mark.parametrize(("name", "profile"), _components("vision", ("internvit",)))
def test_internvit_round_trip(name, profile):
    spec = profile.vision
    config = internvit.to_config(spec, attn=ATTN)
    assert internvit.spec_from_config(config, name) == spec
    built = _on_meta(lambda: internvit.build(spec, attn=ATTN))
    assert count_parameters(built, internvit.rules(""), name)["vision"] == _nonzero(spec.param_groups())


@pytest.mark.parametrize(("name", "profile"), _components("vision", qwen_vit.ARCHITECTURES))
def test_qwen_vit_round_trip(name, profile):
    spec, projector = profile.vision, profile.projector
    config = qwen_vit.to_config(spec, projector, attn=ATTN)
    assert qwen_vit.specs_from_config(config, spec.architecture) == (spec, projector)
    built = _on_meta(lambda: qwen_vit.build(spec, projector, attn=ATTN))
    counts = count_parameters(built, qwen_vit.rules(""), name)
    assert counts["vision"] == _nonzero(spec.param_groups())
    assert sum(counts["projector"].values()) == projector.param_count()


@pytest.mark.parametrize(("name", "profile"), _components("sam2"))
def test_sam2_round_trip(name, profile):
    """Sam2Model (image) holds the trunk, neck, prompt encoder and mask decoder of the spec; of the
    memory side only no_memory_embedding (the probe's note says the rest is not built)."""
    spec = profile.sam2
    config = sam2.to_config(spec, resolution=spec.image_size, attn=ATTN)
    data = {"sam2": {"mask_decoder": spec.mask_decoder_params, "prompt_encoder": spec.prompt_encoder_params,
                     "memory": spec.memory_params}}
    assert sam2.spec_from_config(config, data, name) == spec
    built = _on_meta(lambda: sam2.build(spec, resolution=spec.image_size, attn=ATTN))
    counts = count_parameters(built, sam2.RULES, name)["sam2"]
    groups = spec.param_groups()
    for kind in ("trunk_attention", "trunk_mlp", "trunk_norms", "trunk_embeddings", "neck"):
        assert counts[kind] == groups[kind], kind
    assert counts["mask_decoder"] == spec.mask_decoder_params
    assert counts["prompt_encoder"] == spec.prompt_encoder_params


def test_deepstack_layers_are_evenly_spaced():
    assert qwen_vit.deepstack_indexes(24, 3) == [5, 11, 17]
    assert qwen_vit.deepstack_indexes(32, 0) == []
