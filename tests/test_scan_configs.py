"""memplan scan on the scripts and configs people fine-tune with beyond a plain Trainer script:
Sa2VA's own xtuner config (module-level dicts) and TRL's command-line scripts (TrlParser)."""

import json
import textwrap

import pytest

from memplan.integrations.script_scan import plan_document_for, scan_source
from memplan.spec.aliases import sa2va_profile_for
from memplan.spec.loading import plan_from_document

SA2VA_CONFIG = textwrap.dedent('''
    from peft import LoraConfig
    path = './pretrained/InternVL2_5-1B/'
    max_length = 8192
    batch_size = 2  # per_device
    extra_image_processor = dict(type=DirectResize, target_length=768)
    model = dict(
        type=VideoLLaVASAMModel_zero3,
        frozen_sam2_decoder=True,
        mllm=dict(type=InternVL_Slowfast, model_path=path, freeze_llm=True, freeze_visual_encoder=True,
                  llm_lora=dict(type=LoraConfig, r=64, lora_alpha=128, lora_dropout=0.1)),
        grounding_encoder=dict(type=SAM2TrainRunner),
    )
''')


def _settings(source):
    return scan_source(source=source).settings()


def test_a_sa2va_config_is_read_as_the_sa2va_stack():
    settings = _settings(SA2VA_CONFIG)
    assert settings["stack.kind"] == "sa2va" and settings["model"] == "sa2va-1b"
    assert settings["components.llm.train"] == "lora"
    assert (settings["components.llm.lora.rank"], settings["components.llm.lora.alpha"],
            settings["components.llm.lora.dropout"]) == (64, 128, 0.1)
    assert settings["components.vision.train"] == "frozen" and settings["components.sam2_decoder.train"] == "frozen"
    assert settings["inputs.micro_batch"] == 2 and settings["inputs.sam2_resolution"] == 768
    assert "inputs.text_tokens" not in settings and "engine" not in settings  # a cap; the launch's strategy
    plan = plan_from_document(plan_document_for(scan=scan_source(source=SA2VA_CONFIG)), "scan")
    assert plan.model == "sa2va-1b" and plan.components.llm.lora.rank == 64 and plan.engine.kind == "deepspeed"


def test_a_sa2va_config_without_lora_trains_or_freezes_the_llm():
    frozen = SA2VA_CONFIG.replace("llm_lora=dict(type=LoraConfig, r=64, lora_alpha=128, lora_dropout=0.1)", "x=1")
    assert _settings(frozen)["components.llm.train"] == "frozen"
    assert _settings(frozen.replace("freeze_llm=True", "freeze_llm=False"))["components.llm.train"] == "full"


def test_the_three_lora_readers_agree_on_defaults_and_invalid_values():
    """xtuner's llm_lora (a dict peft builds), LoraConfig and Unsloth's get_peft_model share one reader: a key
    not given takes its library's default, a rank of 0 is refused by name and keeps the plan's value."""
    bare = SA2VA_CONFIG.replace("r=64, lora_alpha=128, lora_dropout=0.1", "lora_alpha=128")
    settings = _settings(bare)
    assert settings["components.llm.lora.rank"] == 8 and settings["components.llm.lora.alpha"] == 128
    config = scan_source(source="from peft import LoraConfig, get_peft_model\n"
                                "model = get_peft_model(model, LoraConfig(r=0, lora_alpha=16))\n")
    lora = next(f for f in config.findings if f.name == "LoraConfig")
    assert "r=0: not a valid LoRA rank" in lora.note
    assert "components.llm.lora.rank" not in dict(lora.settings) and dict(lora.settings)["components.llm.lora.alpha"] == 16
    unsloth = scan_source(source="from unsloth import FastLanguageModel\n"
                                 "model = FastLanguageModel.get_peft_model(model, r=0)\n")
    found = next(f for f in unsloth.findings if f.name.endswith("get_peft_model"))
    assert "r=0: not a valid LoRA rank" in found.note and dict(found.settings)["components.llm.lora.alpha"] == 16


def test_a_dict_named_model_without_sa2va_parts_is_not_a_sa2va_config():
    assert "stack.kind" not in _settings("model = dict(type=Foo, backbone=dict(type=Bar))\n")


@pytest.mark.parametrize("path, profile", [
    ("./pretrained/InternVL2_5-4B", "sa2va-4b"), ("./pretrained/InternVL2_5-1B/", "sa2va-1b"),
    ("OpenGVLab/InternVL2_5-8B", "sa2va-8b"), ("OpenGVLab/InternVL3-2B", "sa2va-internvl3-2b"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "sa2va-qwen2.5-vl-7b"), ("./pretrained/unknown-model", None), ("", None),
])
def test_the_sa2va_profile_on_an_mllm(path, profile):
    assert sa2va_profile_for(path) == profile


TRL_SCRIPT = textwrap.dedent('''
    from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser, get_peft_config
    def main(script_args, training_args, model_args):
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
        trainer = SFTTrainer(model=model, args=training_args, peft_config=get_peft_config(model_args))
        trainer.train()
    if __name__ == "__main__":
        parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
        script_args, training_args, model_args = parser.parse_args_and_config()
        main(script_args, training_args, model_args)
''')


def test_trl_scripts_take_their_training_arguments_from_the_command_line():
    scan = scan_source(source=TRL_SCRIPT)
    settings = scan.settings()
    assert settings["stack.kind"] == "hf-trainer"
    # deepspeed, checkpointing and LoRA come from the command line: the base plan's are kept
    assert "engine" not in settings and "components.llm.checkpointing" not in settings
    assert "components.llm.train" not in settings
    peft = next(f for f in scan.findings if f.name == "peft_config=")
    assert "--use_peft" in peft.note
    command_line = next(f for f in scan.findings if f.name == "TrainingArguments")
    assert command_line.value == "from the command line" and "TrlParser" in command_line.note


def test_peft_config_none_is_no_lora():
    source = TRL_SCRIPT.replace("peft_config=get_peft_config(model_args)", "peft_config=None")
    assert _settings(source)["components.llm.train"] == "full"


SFT_SCRIPT = textwrap.dedent('''
    from trl import SFTConfig, SFTTrainer
    model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-1.5B", dtype=torch.bfloat16)
    args = SFTConfig(output_dir="out", per_device_train_batch_size=1)
    SFTTrainer(model=model, args=args, train_dataset=data).train()
''')


@pytest.fixture
def trl_at(monkeypatch):
    """Pretend this TRL version is installed (None: not installed)."""
    import memplan.estimate.stack as stack

    def install(version):
        monkeypatch.setattr(stack, "installed_version", lambda package: version if package == "trl" else None)
    return install


@pytest.mark.parametrize("version, checkpointing, loss", [
    ("1.9.0", True, "chunked"), ("1.6.0", True, None), ("0.21.0", False, None), (None, True, "chunked"),
])
def test_sftconfig_defaults_follow_the_trl_version(trl_at, version, checkpointing, loss):
    trl_at(version)
    scan = scan_source(source=SFT_SCRIPT)
    settings = scan.settings()
    assert settings["components.llm.checkpointing"] is checkpointing
    assert settings.get("stack.loss") == loss
    assert settings["precision.compute"] == "bf16" and "stack.autocast" not in settings
    found = next(f for f in scan.findings if f.name == "gradient_checkpointing (TRL default)")
    assert ("TRL not installed" in found.note) if version is None else (f"TRL {version} (installed)" in found.note)


def test_sftconfig_keywords_win_over_trl_defaults(trl_at):
    trl_at("1.9.0")
    given = SFT_SCRIPT.replace('per_device_train_batch_size=1',
                               'per_device_train_batch_size=1, gradient_checkpointing=False, loss_type="nll"')
    settings = _settings(given)
    assert settings["components.llm.checkpointing"] is False and settings["stack.loss"] == "full_vocab"
    liger = _settings(SFT_SCRIPT.replace('per_device_train_batch_size=1', 'per_device_train_batch_size=1, '
                                         'use_liger_kernel=True'))
    assert liger["stack.loss"] == "chunked"  # Liger's fused loss, not TRL's chunked nll
    plain = _settings(SFT_SCRIPT.replace("SFTConfig(", "TrainingArguments(").replace("SFTConfig,", "TrainingArguments,"))
    assert plain["components.llm.checkpointing"] is False and "stack.loss" not in plain


UNSLOTH_SCRIPT = textwrap.dedent('''
    from unsloth import FastLanguageModel
    model, tokenizer = FastLanguageModel.from_pretrained(model_name="unsloth/Qwen2.5-7B", max_seq_length=2048)
    model = FastLanguageModel.get_peft_model(model, r=32, lora_alpha=64, use_gradient_checkpointing="unsloth")
    trainer = SFTTrainer(model=model, train_dataset=ds, args=TrainingArguments(per_device_train_batch_size=2, bf16=True))
    trainer.train()
''')


def test_unsloth_lora_is_read_and_its_kernels_said_unmodelled():
    scan = scan_source(source=UNSLOTH_SCRIPT)
    settings = scan.settings()
    assert settings["components.llm.train"] == "lora"
    assert (settings["components.llm.lora.rank"], settings["components.llm.lora.alpha"],
            settings["components.llm.lora.dropout"]) == (32, 64, 0.0)  # dropout: Unsloth's default 0
    assert settings["components.llm.checkpointing"] is True
    peft = next(f for f in scan.findings if f.name == "FastLanguageModel.get_peft_model")
    assert "offloads" in peft.note and "stack.adapter_dtype" not in dict(peft.settings)
    unsloth = next(f for f in scan.findings if f.name == "unsloth")
    assert unsloth.value == "not modelled" and "need less" in unsloth.note


def test_peft_get_peft_model_is_not_taken_for_unsloth():
    plain = UNSLOTH_SCRIPT.replace("FastLanguageModel.get_peft_model(model, r=32, lora_alpha=64, "
                                   "use_gradient_checkpointing=\"unsloth\")", "get_peft_model(model, config)")
    settings = scan_source(source=plain).settings()
    assert settings["stack.adapter_dtype"] == "fp32" and "components.llm.lora.rank" not in settings


LLAMAFACTORY = textwrap.dedent('''
    ### model
    model_name_or_path: Qwen/Qwen2.5-1.5B-Instruct
    ### method
    stage: sft
    finetuning_type: lora
    lora_rank: 16
    additional_target: embed_tokens
    deepspeed: ds/z3.json
    ### train
    per_device_train_batch_size: 2
    cutoff_len: 4096
    bf16: true
''')


def _write(tmp_path, text, *, deepspeed=None):
    config = tmp_path / "examples" / "train_lora" / "mine.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    if deepspeed is not None:
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "z3.json").write_text(json.dumps(deepspeed))
    return config


def test_a_llamafactory_config_is_read_with_its_defaults(tmp_path):
    from memplan.integrations.script_scan import scan_script

    config = _write(tmp_path, LLAMAFACTORY, deepspeed={"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}})
    scan = scan_script(path=config)
    settings = scan.settings()
    assert settings["stack.kind"] == "hf-trainer" and settings["model"] == "qwen2.5-1.5b"
    assert settings["components.llm.lora.rank"] == 16 and settings["components.llm.lora.alpha"] == 32  # 2 x rank
    assert settings["components.llm.lora.dropout"] == 0.0 and settings["components.llm.modules_to_save"] == ["embed_tokens"]
    assert settings["engine"]["zero_stage"] == 3 and "stack.adapter_dtype" not in settings  # DeepSpeed's engine
    assert settings["components.llm.checkpointing"] is True and settings["stack.checkpoint_scope"] == "model"
    assert settings["components.projector.train"] == "frozen" and settings["attention"] == "sdpa"
    assert settings["inputs.micro_batch"] == 2 and "inputs.text_tokens" not in settings
    defaults = {f.name: f for f in scan.findings}
    assert defaults["freeze_multi_modal_projector"].line == 0 and "default" in defaults["freeze_multi_modal_projector"].note
    assert defaults["finetuning_type"].line == 6 and defaults["finetuning_type"].snippet == "finetuning_type: lora"


def test_llamafactory_upcasts_adapters_and_full_weights_without_deepspeed(tmp_path):
    from memplan.integrations.script_scan import scan_script

    text = LLAMAFACTORY.replace("deepspeed: ds/z3.json\n", "")
    assert scan_script(path=_write(tmp_path, text)).settings()["stack.adapter_dtype"] == "fp32"
    full = scan_script(path=_write(tmp_path / "b", text.replace("finetuning_type: lora", "finetuning_type: full"))).settings()
    assert full["components.llm.train"] == "full" and full["precision.weights_fp32"] is True
    pure = scan_script(path=_write(tmp_path / "c", text + "pure_bf16: true\n")).settings()
    assert pure["stack.adapter_dtype"] == "compute"
    off = scan_script(path=_write(tmp_path / "d", text + "disable_gradient_checkpointing: true\nflash_attn: disabled\n"))
    assert off.settings()["components.llm.checkpointing"] is False and off.settings()["attention"] == "eager"


def test_llamafactory_and_a_script_read_one_deepspeed_json_alike(tmp_path):
    """The same JSON through LLaMA-Factory's deepspeed: key and a script's deepspeed= gives one engine, one shown
    value and the same note on a stage not given (rules.engine_of_config)."""
    from memplan.integrations.script_scan import scan_script

    ds = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}, "bf16": {"enabled": "auto"}}
    factory = next(f for f in scan_script(path=_write(tmp_path, LLAMAFACTORY, deepspeed=ds)).findings
                   if f.name == "deepspeed")
    script = tmp_path / "train.py"
    script.write_text("from transformers import TrainingArguments\n"
                      "args = TrainingArguments(output_dir='o', deepspeed='ds/z3.json')\n")
    scanned = next(f for f in scan_script(path=script).findings if f.name == "deepspeed")
    assert factory.value == scanned.value and dict(factory.settings)["engine"] == dict(scanned.settings)["engine"]
    assert "stage not given" in factory.note and "stage not given" in scanned.note


def test_a_missing_deepspeed_file_is_said_and_the_engine_kept(tmp_path):
    from memplan.integrations.script_scan import scan_script

    scan = scan_script(path=_write(tmp_path, LLAMAFACTORY))
    assert "engine" not in scan.settings()
    assert "not found" in next(f for f in scan.findings if f.name == "deepspeed").note


@pytest.mark.parametrize("text, message", [
    ("name: x\nlr: 3\n", "not a LLaMA-Factory training config"),
    ("stage: [unclosed\n", "not YAML at line"),
    ("stage: dpo\nfinetuning_type: lora\n", "stage='dpo': only sft and pt"),
])
def test_other_yaml_is_one_line_exit_2(tmp_path, text, message):
    from typer.testing import CliRunner

    from memplan.cli.main import app

    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["scan", str(path)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
