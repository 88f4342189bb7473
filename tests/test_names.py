"""Names people use for models: Hugging Face repo ids (case-insensitive) and config.json paths."""

import json

import pytest
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.cli.names import load_model
from memplan.spec.aliases import profile_aliases
from memplan.spec.loading import load_profile, profile_names

runner = CliRunner()
FIXTURES = "tests/fixtures/hf_configs"


@pytest.mark.parametrize("alias, name", [
    ("ByteDance/Sa2VA-4B", "sa2va-4b"), ("Sa2VA-4B", "sa2va-4b"), ("bytedance/sa2va-26b", "sa2va-26b"),
    ("ByteDance/Sa2VA-InternVL3-8B", "sa2va-internvl3-8b"), ("ByteDance/Sa2VA-Qwen2_5-VL-7B", "sa2va-qwen2.5-vl-7b"),
    ("OpenGVLab/InternVL2_5-4B", "internvl2.5-4b"), ("InternVL2_5-1B", "internvl2.5-1b"),
    ("Qwen/Qwen2.5-1.5B-Instruct", "qwen2.5-1.5b"), ("qwen/qwen2.5-7b", "qwen2.5-7b"), ("SA2VA-8B", "sa2va-8b"),
    ("internlm/internlm2_5-7b-chat", "internlm2.5-7b"), ("OpenGVLab/InternViT-6B-448px-V2_5", "internvit-6b"),
])
def test_hugging_face_repo_ids_name_shipped_profiles(alias, name):
    assert load_profile(alias).name == name


def test_every_shipped_sa2va_internvl_and_qwen_profile_has_a_repo_id_alias():
    aliases = profile_aliases()
    for name in profile_names():
        if name.startswith(("sa2va-", "internvl", "qwen2.5-")) and "-vl-" not in name.removeprefix("sa2va-"):
            assert any("/" in alias and target == name for alias, target in aliases.items()), name
    for name in ("sa2va-qwen2.5-vl-3b", "sa2va-qwen3-vl-4b"):
        assert any("/" in alias and target == name for alias, target in aliases.items()), name


def test_an_unknown_name_still_suggests_the_closest():
    result = runner.invoke(app, ["estimate", "-m", "sa2va-5b"])
    assert result.exit_code == 2 and "closest" in result.output and "\n" not in result.output.strip()


def test_the_cli_accepts_a_repo_id():
    result = runner.invoke(app, ["estimate", "-m", "ByteDance/Sa2VA-1B", "--format", "json", "--host-ram", "64"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == "sa2va-1b"


def test_a_config_json_is_imported_on_the_fly():
    imported = load_model(f"{FIXTURES}/internvl2_5-4b.json")
    shipped = load_profile("internvl2.5-4b")
    assert imported.param_count() == shipped.param_count()
    assert imported.component_params() == shipped.component_params()
    result = runner.invoke(app, ["estimate", "-m", f"{FIXTURES}/qwen2.5-0.5b-instruct.json", "--format", "json",
                                 "--host-ram", "64"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == "qwen2.5-0.5b-instruct"


def test_a_folder_holding_a_config_json_is_imported(tmp_path):
    folder = tmp_path / "Qwen2.5-0.5B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text(open(f"{FIXTURES}/qwen2.5-0.5b-instruct.json").read())
    assert load_model(str(folder)).param_count() == load_profile("qwen2.5-0.5b").param_count()


def test_a_config_json_of_an_unknown_model_type_is_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    result = runner.invoke(app, ["estimate", "-m", str(path)])
    assert result.exit_code == 2 and "model_type='mamba' is not importable" in result.output
