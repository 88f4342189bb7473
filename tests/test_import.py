"""`memplan profile import/compose`: Hugging Face configs become profiles whose formula counts equal
the transformers model instantiated on the meta device, exactly.

Fixtures (tests/fixtures/hf_configs/) are the published config.json files of every shipped LLM and
vision tower (Qwen2.5, InternLM2.5, InternViT, Qwen2.5-VL, Qwen3-VL), of InternVL2.5-1B/4B/8B
(internvl_chat, remote code) and InternVL3-2B-hf (transformers' internvl format), and the SAM2 sizes in
transformers' Sam2Config form (written by Sam2Config.save_pretrained). In the InternVL2.5 llm_config
the head is untied, as the published 938M / 3.71B totals require.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memplan.cli.profile_cmd import profile_app
from memplan.integrations.huggingface import (
    SpecMismatchError,
    build_model,
    component_counts,
    compose,
    import_config,
    inspect_config,
    profile_yaml,
    write_profile,
)
from memplan.spec.loading import InputError, load_profile, profile_from_document

pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("*.json"))

# fixture -> {slot: shipped profile whose slot it reproduces}
SHIPPED = {
    "qwen2.5-0.5b-instruct.json": {"llm": "qwen2.5-0.5b"},
    "qwen2.5-1.5b-instruct.json": {"llm": "qwen2.5-1.5b"},
    "qwen2.5-3b-instruct.json": {"llm": "qwen2.5-3b"},
    "qwen2.5-7b-instruct.json": {"llm": "qwen2.5-7b"},
    "qwen2.5-14b-instruct.json": {"llm": "qwen2.5-14b"},
    "internlm2_5-7b-chat.json": {"llm": "internlm2.5-7b"},
    "internlm2_5-20b-chat.json": {"llm": "internlm2.5-20b"},
    "internvit-300m-448px-v2_5.json": {"vision": "internvit-300m"},
    "internvit-6b-448px-v2_5.json": {"vision": "internvit-6b"},
    "qwen2.5-vl-3b-instruct.json": {"vision": "qwen2.5-vl-vit", "projector": "qwen2.5-vl-vit", "llm": "qwen2.5-vl-3b-text"},
    "qwen2.5-vl-7b-instruct.json": {"vision": "qwen2.5-vl-vit-7b", "projector": "qwen2.5-vl-vit-7b", "llm": "qwen2.5-vl-7b-text"},
    "qwen3-vl-4b-instruct.json": {"vision": "qwen3-vl-vit", "projector": "qwen3-vl-vit", "llm": "qwen3-vl-4b-text"},
    "internvl2_5-1b.json": {"vision": "internvl2.5-1b", "projector": "internvl2.5-1b", "llm": "internvl2.5-1b"},
    "internvl2_5-4b.json": {"vision": "internvl2.5-4b", "projector": "internvl2.5-4b", "llm": "internvl2.5-4b"},
    "internvl2_5-8b.json": {"vision": "internvl2.5-8b", "projector": "internvl2.5-8b", "llm": "internvl2.5-8b"},
}
SAM2_FIXTURES = {f"sam2-hiera-{size}.json": f"sam2-hiera-{size}" for size in ("tiny", "small", "base-plus", "large")}


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def instantiate(config: dict):
    """The model a fixture describes, built here through transformers' Auto classes for native types;
    remote-code types (internlm2, intern_vit_6b, internvl_chat) have only transformers ports, which
    hf_import.build_model selects."""
    import torch
    import transformers

    model_type = config["model_type"]
    rest = {k: v for k, v in config.items() if k != "model_type"}
    with torch.device("meta"):
        if model_type in ("qwen2", "qwen3", "llama"):
            return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **rest))
        if model_type in ("qwen2_5_vl", "qwen3_vl", "internvl"):
            hf = transformers.AutoConfig.for_model(model_type, **rest)
            return transformers.AutoModelForImageTextToText.from_config(hf)
        if model_type == "sam2":
            return transformers.Sam2Model(transformers.Sam2Config(**rest))
    return build_model(config)


def components_of(model, model_type: str) -> dict[str, int]:
    """Parameters per memplan Component by top-level module, independent of hf_import's rules."""
    out: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        if model_type.startswith("sam2"):
            component = "sam2_decoder" if name.startswith(("mask_decoder.", "prompt_encoder.")) else "sam2_encoder"
        elif name.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list.", "model.multi_modal_projector.")):
            component = "projector"
        elif name.startswith(("model.visual.", "model.vision_tower.")) or model_type == "intern_vit_6b":
            component = "vision"
        else:
            component = "llm"
        out[component] = out.get(component, 0) + parameter.numel()
    return out


# ----------------------------------------------------------------------------- import == instantiate
def test_fixtures_cover_every_shipped_llm_and_vision_tower():
    shipped = {name for slots in SHIPPED.values() for name in slots.values()}
    for name in ("qwen2.5-0.5b", "qwen2.5-3b", "internvit-300m", "internvit-6b", "qwen3-vl-vit", "internlm2.5-20b"):
        assert name in shipped
    assert set(SHIPPED) | set(SAM2_FIXTURES) | {"internvl3-2b-hf.json"} == set(FIXTURE_FILES)


@pytest.mark.parametrize("fixture", FIXTURE_FILES)
def test_import_equals_instantiated_model(fixture):
    config = load_fixture(fixture)
    profile = import_config(FIXTURES / fixture)
    model = instantiate(config)
    assert profile.component_params() == components_of(model, config["model_type"])
    assert profile.param_count() == sum(p.numel() for p in model.parameters())
    assert profile.source == str(FIXTURES / fixture)


@pytest.mark.parametrize("fixture", FIXTURE_FILES)
def test_import_counts_per_module_kind(fixture):
    result = inspect_config(FIXTURES / fixture)
    for slot, kinds in result.measured.items():
        formula = getattr(result.profile, slot).param_groups()
        assert {k: v for k, v in formula.items() if v} == {k: v for k, v in kinds.items() if v}
    assert component_counts(result.measured) == result.profile.component_params()


@pytest.mark.parametrize("fixture", sorted(SHIPPED))
def test_import_reproduces_shipped_profile(fixture):
    imported = import_config(FIXTURES / fixture)
    for slot, shipped_name in SHIPPED[fixture].items():
        shipped = getattr(load_profile(shipped_name), slot)
        assert getattr(imported, slot).param_groups() == shipped.param_groups(), f"{slot} of {shipped_name}"
        assert getattr(imported, slot) == shipped, f"{slot} fields of {shipped_name}"


@pytest.mark.parametrize("fixture", sorted(SAM2_FIXTURES))
def test_sam2_import_reproduces_trunk_neck_and_decoder(fixture):
    """Sam2Model (image) has the shipped trunk, neck, mask decoder and prompt encoder; of the memory
    modules Sa2VA loads (memory attention/encoder, object pointers) it holds only no_memory_embedding."""
    imported = import_config(FIXTURES / fixture).sam2
    shipped = load_profile(SAM2_FIXTURES[fixture]).sam2
    assert imported.trunk_groups() == shipped.trunk_groups()
    assert imported.neck_count() == shipped.neck_count()
    assert imported.decoder_param_count() == shipped.decoder_param_count()
    assert imported.memory_params == 256


def test_sam2_video_memory_modules():
    """Sam2VideoModel: SAM 2.1 defaults hold 7,522,033 memory-side parameters; with SAM 2.0's flags
    (no occlusion embedding, no object-pointer temporal projection) 7,505,521."""
    config = {**load_fixture("sam2-hiera-large.json"), "model_type": "sam2_video"}
    assert import_config(config).sam2.memory_params == 7_522_033
    sam20 = {**config, "enable_occlusion_spatial_embedding": False, "enable_temporal_pos_encoding_for_object_pointers": False}
    profile = import_config(sam20)
    assert profile.sam2.memory_params == 7_505_521
    assert profile.param_count() == 224_430_130


# ----------------------------------------------------------------------------- errors
def test_unknown_architecture_names_the_needed_fields():
    with pytest.raises(InputError) as error:
        import_config({"model_type": "mamba", "hidden_size": 768})
    message = str(error.value)
    assert "\n" not in message
    for field in ("model_type='mamba'", "kind", "architecture", "num_layers", "hidden_size", "vocab_size"):
        assert field in message


@pytest.mark.parametrize(
    ("change", "kind"),
    [({"model_type": "llama", "mlp_bias": True}, "llm.mlp"),
     ({"model_type": "llama", "attention_bias": True}, "llm.attention"),  # Llama's o_proj bias
     ({"model_type": "qwen3", "attention_bias": True}, "llm.attention")],
)
def test_inexpressible_architecture_names_what_differs(change, kind):
    config = {**load_fixture("qwen2.5-0.5b-instruct.json"), "num_hidden_layers": 2, **change}
    with pytest.raises(SpecMismatchError, match=kind):
        import_config(config)


def test_internvit_mean_pooling_off_is_inexpressible():
    config = {**load_fixture("internvl3-2b-hf.json")}
    config["vision_config"] = {**config["vision_config"], "use_mean_pooling": False, "num_hidden_layers": 2}
    with pytest.raises(SpecMismatchError, match="layernorm"):
        import_config(config)


def test_import_needs_no_torch_at_module_import():
    code = "import sys, memplan.integrations.huggingface, memplan.cli.profile_cmd; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- YAML out
@pytest.mark.parametrize("fixture", FIXTURE_FILES)
def test_written_profile_loads_back_equal(fixture, tmp_path):
    profile = import_config(FIXTURES / fixture, name="roundtrip")
    path = write_profile(profile, tmp_path / "roundtrip.yaml")
    assert load_profile(str(path)) == profile


def test_component_profile_uses_component_style():
    text = profile_yaml(import_config(FIXTURES / "qwen2.5-7b-instruct.json"))
    assert text.splitlines()[:4] == [
        "name: qwen2.5-7b-instruct",
        text.splitlines()[1],
        f"source: {FIXTURES / 'qwen2.5-7b-instruct.json'}",
        "kind: llm",
    ]


def test_write_refuses_to_overwrite(tmp_path):
    profile = load_profile("qwen2.5-0.5b")
    path = write_profile(profile, tmp_path / "p.yaml")
    with pytest.raises(InputError, match="exists"):
        write_profile(profile, path)
    write_profile(profile, path, overwrite=True)


# ----------------------------------------------------------------------------- compose
def test_compose_derives_internvl_projector_and_seg_head():
    profile = compose(vision="internvit-300m", llm={"from": "qwen2.5-7b", "vocab_size": 151674}, sam2="sam2-hiera-large")
    shipped = load_profile("sa2va-internvl3-8b")
    assert profile.projector == shipped.projector
    assert profile.seg_head == shipped.seg_head
    assert profile.component_params() == shipped.component_params()


@pytest.mark.parametrize(
    ("vision", "llm", "shipped"),
    [("qwen2.5-vl-vit", "qwen2.5-vl-7b-text", "sa2va-qwen2.5-vl-7b"),
     ("qwen3-vl-vit", "qwen3-vl-4b-text", "sa2va-qwen3-vl-4b")],
)
def test_compose_derives_qwen_mergers(vision, llm, shipped):
    profile = compose(vision=vision, llm=llm, sam2="sam2-hiera-large")
    assert profile.component_params() == load_profile(shipped).component_params()


def test_compose_names_disagreeing_widths():
    with pytest.raises(InputError, match=r"projector.output_size\(896\) != llm.hidden_size\(3584\)"):
        compose(vision="internvit-300m", projector="sa2va-1b", llm="qwen2.5-7b")
    with pytest.raises(InputError, match=r"seg_head.input_size\(896\) != llm.hidden_size\(3584\)"):
        compose(llm="qwen2.5-7b", sam2="sam2-hiera-large", seg_head="sa2va-1b")
    with pytest.raises(InputError, match="a projector slot needs kind='projector'"):
        compose(vision="internvit-300m", projector="qwen2.5-7b", llm="qwen2.5-7b")


def test_compose_keeps_a_vision_only_profile():
    profile = compose(vision="internvit-6b")
    assert profile.component_params() == {"vision": 5_536_496_000}
    assert profile_from_document(json.loads(json.dumps(profile.model_dump(mode="json"))), "x") == profile


# ----------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_import_writes_and_refuses_overwrite(tmp_path):
    out = tmp_path / "q.yaml"
    args = ["import", str(FIXTURES / "qwen2.5-0.5b-instruct.json"), "--name", "q05", "--out", str(out)]
    result = runner.invoke(profile_app, args)
    assert result.exit_code == 0, result.output
    assert "494,032,768" in result.stdout
    assert load_profile(str(out)).param_count() == 494_032_768
    again = runner.invoke(profile_app, args)
    assert again.exit_code == 2
    assert again.stderr.startswith("error: ") and "exists" in again.stderr
    assert "Traceback" not in again.output
    assert runner.invoke(profile_app, [*args, "--force"]).exit_code == 0


def test_cli_import_unknown_architecture(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "rwkv", "hidden_size": 2048}))
    result = runner.invoke(profile_app, ["import", str(config), "--out", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    for field in ("kind", "architecture", "num_layers", "num_heads", "intermediate_size"):
        assert field in result.stderr
    assert not (tmp_path / "r.yaml").exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_cli_import_bad_file(tmp_path, content):
    config = tmp_path / "config.json"
    config.write_text(content)
    result = runner.invoke(profile_app, ["import", str(config), "--out", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_cli_import_missing_file(tmp_path):
    result = runner.invoke(profile_app, ["import", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2 and "file not found" in result.stderr


def test_cli_compose(tmp_path):
    out = tmp_path / "mine.yaml"
    args = ["compose", "--vision", "internvit-300m", "--llm", "qwen2.5-1.5b", "--sam2", "sam2-hiera-tiny", "--name", "mine", "--out", str(out)]
    result = runner.invoke(profile_app, args)
    assert result.exit_code == 0, result.output
    profile = load_profile(str(out))
    assert profile.projector.output_size == profile.seg_head.input_size == 1536
    assert f"{profile.param_count():,}" in result.stdout
    bad = runner.invoke(profile_app, ["compose", "--vision", "internvit-300m", "--projector", "sa2va-1b", "--llm", "qwen2.5-1.5b", "--out", str(tmp_path / "b.yaml")])
    assert bad.exit_code == 2 and "projector.output_size(896) != llm.hidden_size(1536)" in bad.stderr


def test_imported_profile_estimates_and_probes_like_a_shipped_one(tmp_path):
    """A config.json imported to a profile file works wherever a name does: `memplan estimate`
    reads it, and the probe builds a model of exactly the profile's counts and trains it."""
    pytest.importorskip("torch")
    import json as _json

    from typer.testing import CliRunner

    from memplan.cli.main import app
    from memplan.integrations.huggingface import import_config, write_profile
    from memplan.spec.loading import load_profile
    from memplan.spec.plan import Plan
    from memplan.probe.apply import parameter_counts
    from memplan.probe.build import build_model
    from memplan.probe.run import run_probe

    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 2, "vocab_size": 512, "tie_word_embeddings": True}
    source = tmp_path / "config.json"
    source.write_text(_json.dumps(config))
    out = tmp_path / "tiny-qwen.yaml"
    write_profile(import_config(source, name="tiny-qwen"), out)

    result = CliRunner().invoke(app, ["estimate", "--model", str(out), "--tiles", "0", "--objects", "0",
                                      "--text-len", "64", "--lora-rank", "8", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert _json.loads(result.output)["peak_allocated_bytes"] > 0

    profile = load_profile(str(out))
    plan = Plan.model_validate({
        "engine": {"kind": "pytorch", "zero_stage": 0}, "precision": {"compute": "fp32"},
        "components": {"llm": {"train": "lora", "lora": {"rank": 4, "alpha": 8}}},
        "inputs": {"micro_batch": 1, "text_tokens": 32, "tiles": 0, "objects": 0}})
    model = build_model(profile, plan)
    assert parameter_counts(model, trainable=True) == profile.component_params()  # nothing frozen yet
    record = run_probe(profile, plan, steps=2, device="cpu", command="pytest")
    assert record["status"] == "ok", record.get("error")
