"""memplan scan: a training script read without running it (memplan/integrations/script_scan.py).

The fixture scripts (tests/fixtures/scripts/) are written the way users write them; each test checks
what the scan finds, on which line, and that the plan it writes estimates with those stack behaviours.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.estimate.peak import estimate
from memplan.estimate.stack import resolve
from memplan.integrations.script_scan import NOT_LITERAL, plan_document_for, scan_script, scan_source
from memplan.spec.errors import InputError
from memplan.spec.loading import load_plan, load_profile, plan_from_document

SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"


def by_name(scan) -> dict[str, list]:
    out: dict[str, list] = {}
    for finding in scan.findings:
        out.setdefault(finding.name, []).append(finding)
    return out


def plan_of(scan, base=None):
    return plan_from_document(plan_document_for(scan=scan, base=base), "test")


def test_trainer_lora_script_with_checkpointing_and_a_deepspeed_json():
    scan = scan_script(path=SCRIPTS / "trainer_lora.py")
    found = by_name(scan)
    assert scan.stack == "hf-trainer" and found["stack"][0].line == 48
    assert found["gradient_checkpointing"][0].line == 42
    assert found["gradient_checkpointing"][0].snippet == "gradient_checkpointing=True,"
    assert found["deepspeed"][0].value == "ZeRO-2, offload optimizer cpu, params none"
    assert found["get_peft_model"][0].value == "adapters fp32"  # peft's autocast_adapter_dtype=True
    settings = scan.settings()
    assert settings["components.llm.lora.rank"] == 16 and settings["components.llm.modules_to_save"] == []
    assert settings["stack.fused_optimizer"] is False  # optim="adamw_torch"
    assert settings["inputs.micro_batch"] == 2
    plan = plan_of(scan)
    assert (plan.engine.kind, plan.engine.zero_stage, plan.engine.offload_optimizer) == ("deepspeed", 2, "cpu")
    assert plan.components.llm.checkpointing and plan.components.llm.lora.rank == 16
    assert not plan.precision.master_weights and plan.precision.compute == "bf16"
    behaviour = resolve(plan)
    assert (behaviour.kind, behaviour.adapters_fp32, behaviour.fused_optimizer, behaviour.autocast) == (
        "hf-trainer", True, False, True)
    assert behaviour.keeps_outputs is False  # Trainer's compute_loss returns the loss only
    # on the Trainer recipe, the scanned plan estimates as the one a user would write by hand
    profile = load_profile("qwen2.5-1.5b")
    scanned = plan_of(scan, base="hf-trainer-lora")
    by_hand = plan_from_document({**load_plan("hf-trainer-lora").model_dump(mode="json"),
                                  "engine": {"kind": "deepspeed", "zero_stage": 2, "offload_optimizer": "cpu",
                                             "overlap_comm": True},
                                  "stack": {"kind": "hf-trainer", "adapter_dtype": "fp32", "fused_optimizer": False}},
                                 "by hand")
    by_hand = by_hand.model_copy(update={"inputs": by_hand.inputs.model_copy(update={"micro_batch": 2})})
    assert estimate(profile, scanned).peak_allocated_bytes == estimate(profile, by_hand).peak_allocated_bytes
    assert estimate(profile, scanned).host_bytes == estimate(profile, by_hand).host_bytes


def test_accelerate_loop_keeps_outputs_and_bf16_adapters():
    scan = scan_script(path=SCRIPTS / "accelerate_loop.py")
    found = by_name(scan)
    assert scan.stack == "accelerate"
    assert found["get_peft_model"][0].value == "adapters compute"  # autocast_adapter_dtype=False
    assert found["outputs kept"][0].value == "yes" and found["outputs kept"][0].line == 23
    assert found["gradient_checkpointing_enable"][0].line == 11
    plan = plan_of(scan)
    behaviour = resolve(plan)
    assert (behaviour.kind, behaviour.adapters_fp32, behaviour.keeps_outputs, behaviour.fused_optimizer) == (
        "accelerate", False, True, True)
    assert behaviour.outputs_fp32  # accelerate's convert_outputs_to_fp32 under mixed_precision="bf16"
    assert plan.engine.kind == "pytorch" and plan.components.llm.lora.rank == 8


def test_custom_loop_keeping_outputs_with_eager_attention_and_in_place_embeddings():
    scan = scan_script(path=SCRIPTS / "custom_loop.py")
    found = by_name(scan)
    assert scan.stack == "custom-loop"
    assert found["attn_implementation"][0].value == "eager"
    assert [f.value for f in found["trained in place"]] == ["embed_tokens", "lm_head"]
    assert [f.line for f in found["trained in place"]] == [14, 15]
    assert found["outputs kept"][0].value == "yes"
    lora = found["LoraConfig"][0]
    assert "via rank, line 6" in lora.note  # r=rank, rank assigned once to a literal
    assert dict(lora.settings)["components.llm.lora.alpha"] == 64  # 2 * rank
    plan = plan_of(scan)
    assert plan.attention == "eager" and not plan.components.llm.checkpointing
    assert plan.components.llm.modules_to_save == ("embed_tokens", "lm_head")
    behaviour = resolve(plan)
    assert behaviour.eager_attention and behaviour.embeddings_in_place and behaviour.keeps_outputs
    assert behaviour.autocast is False and behaviour.adapters_fp32
    profile = load_profile("qwen2.5-1.5b")
    kept = estimate(profile, plan)
    dropped = estimate(profile, plan.model_copy(update={"stack": plan.stack.model_copy(update={"keeps_outputs": False})}))
    assert kept.peak_allocated_bytes > dropped.peak_allocated_bytes  # the kept logits are in the estimate


def test_dropped_outputs_liger_fp32_weights_and_non_literals():
    source = (
        "import torch, argparse\n"
        "from transformers import AutoModelForCausalLM\n"
        "from liger_kernel.transformers import apply_liger_kernel_to_qwen2\n"
        "apply_liger_kernel_to_qwen2()\n"
        "p = argparse.ArgumentParser(); args = p.parse_args()\n"
        "model = AutoModelForCausalLM.from_pretrained('m', torch_dtype=torch.float32, attn_implementation=args.attn)\n"
        "opt = torch.optim.AdamW(model.parameters())\n"
        "for batch in loader:\n"
        "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "        loss = model(**batch).loss\n"
        "    loss.backward()\n"
    )
    scan = scan_source(source=source, script="t.py")
    found = by_name(scan)
    assert found["outputs kept"][0].value == "no"
    assert found["attn_implementation"][0].note == NOT_LITERAL
    assert "attention" not in scan.settings()
    settings = scan.settings()
    assert settings["stack.loss"] == "chunked" and settings["stack.autocast"] is True
    assert settings["precision.weights_fp32"] is True and settings["precision.master_weights"] is True
    assert settings["components.llm.train"] == "full"  # no peft
    plan = plan_of(scan)
    assert plan.components.llm.lora is None and resolve(plan).chunked_loss


def test_deepspeed_dict_literal_and_input_grad_hooks_in_a_callback():
    source = (
        "from transformers import Trainer, TrainingArguments, TrainerCallback\n"
        "ds = {'zero_optimization': {'stage': 3, 'offload_param': {'device': 'cpu'},"
        " 'offload_optimizer': {'device': 'cpu'}}, 'train_batch_size': n}\n"
        "class Hooks(TrainerCallback):\n"
        "    def on_train_begin(self, args, state, control, model=None, **kw):\n"
        "        model.disable_input_require_grads()\n"
        "        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))\n"
        "a = TrainingArguments('o', bf16=True, gradient_checkpointing=True, deepspeed=ds, optim='adamw_torch_fused')\n"
        "Trainer(model=m, args=a, callbacks=[Hooks()]).train()\n"
    )
    scan = scan_source(source=source, script="t.py")
    settings = scan.settings()
    assert settings["engine"]["zero_stage"] == 3 and settings["engine"]["offload_params"] == "cpu"
    assert "via ds" in by_name(scan)["deepspeed"][0].note
    assert settings["stack.input_grad_hooks"] == "llm" and settings["stack.fused_optimizer"] is True
    outside = source.replace("    def on_train_begin", "    def setup")
    found = by_name(scan_source(source=outside, script="t.py"))
    assert found["disable_input_require_grads"][0].value == "does not hold"


def test_language_model_checkpointing_scope_and_a_grad_scaler_loop():
    source = (
        "model.language_model.gradient_checkpointing_enable()\n"
        "scaler = torch.amp.GradScaler()\n"
        "for batch in loader:\n"
        "    outputs = model(**batch)\n"
        "    loss = loss_fn(outputs.logits, batch['labels'])\n"
        "    scaler.scale(loss).backward()\n"
    )
    scan = scan_source(source=source, script="t.py")
    settings = scan.settings()
    assert settings["stack.kind"] == "custom-loop" and settings["stack.checkpoint_scope"] == "components"
    assert settings["stack.keeps_outputs"] is True
    deleted = source.replace("    scaler.scale", "    del outputs\n    scaler.scale")
    assert scan_source(source=deleted, script="t.py").settings()["stack.keeps_outputs"] is False


def test_syntax_error_and_directory_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"SCRIPT=bad.py: not Python at line 1"):
        scan_source(source="def f(:\n", script="bad.py")
    with pytest.raises(InputError, match="is a directory"):
        scan_script(path=tmp_path)
    with pytest.raises(InputError, match="SCRIPT=deep.py: nested too deeply"):
        scan_source(source="x = " + "+".join(["1"] * 200_000) + "\n", script="deep.py")
    assert scan_source(source="", script="empty.py").findings == ()


def test_the_scan_never_runs_the_script(tmp_path):
    script = tmp_path / "booby_trap.py"
    shutil.copy(SCRIPTS / "booby_trap.py", script)
    scan = scan_script(path=script)
    assert scan.stack == "hf-trainer"
    assert not (tmp_path / "EXECUTED").exists()


def test_scan_imports_no_torch_and_runs_nothing(tmp_path):
    shutil.copy(SCRIPTS / "booby_trap.py", tmp_path / "booby_trap.py")
    code = (
        "import sys\nfrom typer.testing import CliRunner\nimport memplan.cli.main\n"
        f"r = CliRunner().invoke(memplan.cli.main.app, ['scan', {str(tmp_path / 'booby_trap.py')!r}, '-f', 'json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(' '.join(m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'accelerate') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"
    assert not (tmp_path / "EXECUTED").exists()


def test_cli_table_json_and_yaml():
    runner = CliRunner()
    table = runner.invoke(app, ["scan", str(SCRIPTS / "custom_loop.py")], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "custom-loop" in table.output and "attention: eager" in table.output and "nothing written" in table.output
    assert "torch.optim.AdamW([p for p" in table.output  # source shown as written (no rich markup eaten)
    document = json.loads(runner.invoke(app, ["scan", str(SCRIPTS / "trainer_lora.py"), "-f", "json"]).stdout)
    assert document["stack"] == "hf-trainer" and document["written"] is None
    assert document["fragment"]["engine"]["zero_stage"] == 2
    assert {"finding", "value", "line", "source", "settings", "note"} <= set(document["findings"][0])
    fragment = yaml.safe_load(runner.invoke(app, ["scan", str(SCRIPTS / "accelerate_loop.py"), "-f", "yaml"]).stdout)
    assert fragment["stack"]["kind"] == "accelerate" and fragment["stack"]["adapter_dtype"] == "compute"


def test_cli_out_writes_a_plan_estimate_accepts_and_never_overwrites(tmp_path):
    runner = CliRunner()
    target = tmp_path / "plan.yaml"
    result = runner.invoke(app, ["scan", str(SCRIPTS / "custom_loop.py"), "--plan", "hf-trainer-lora",
                                 "--out", str(target)])
    assert result.exit_code == 0, result.output
    plan = load_plan(target)
    assert plan.stack.kind == "custom-loop" and plan.attention == "eager" and plan.hardware.vram_gib == 24
    assert plan.stack.embeddings_training == "in_place"
    estimated = runner.invoke(app, ["estimate", "--plan", str(target), "-m", "qwen2.5-1.5b", "--format", "json"])
    assert estimated.exit_code == 0, estimated.output
    assert json.loads(estimated.stdout)["stack"]["kind"] == "custom-loop"
    before = target.read_text()
    again = runner.invoke(app, ["scan", str(SCRIPTS / "trainer_lora.py"), "--out", str(target)])
    assert again.exit_code == 2 and "--force" in again.output and target.read_text() == before
    forced = runner.invoke(app, ["scan", str(SCRIPTS / "trainer_lora.py"), "--out", str(target), "--force"])
    assert forced.exit_code == 0 and load_plan(target).engine.zero_stage == 2


def test_default_base_is_the_official_recipe(tmp_path):
    target = tmp_path / "p.yaml"
    assert CliRunner().invoke(app, ["scan", str(SCRIPTS / "trainer_lora.py"), "--out", str(target)]).exit_code == 0
    plan = load_plan(target)
    official = load_plan("sa2va-official")
    assert plan.model == official.model and plan.inputs.tiles == official.inputs.tiles
    assert plan.stack.kind == "hf-trainer" and plan.components.llm.modules_to_save == ()


def test_kbit_script_run_through_a_cli_wrapper():
    """Function defaults are read (a command line may change them); k-bit loading is named as not modelled;
    prepare_model_for_kbit_training turns checkpointing on for a k-bit model without upcasting the whole LLM."""
    scan = scan_script(path=SCRIPTS / "kbit_fire.py")
    found = by_name(scan)
    settings = scan.settings()
    assert settings["components.llm.lora.rank"] == 8 and settings["inputs.micro_batch"] == 4
    assert "the default of train(lora_r=...)" in found["LoraConfig"][0].note
    assert found["load_in_8bit"][0].value == "8-bit" and "not modelled" in found["load_in_8bit"][0].note
    assert settings["components.llm.checkpointing"] is True
    assert "precision.llm_fp32_upcast" not in settings or settings["precision.llm_fp32_upcast"] is False
    assert "not modelled" in found["torch.compile"][0].note


def test_kbit_prepare_on_an_unquantized_model_upcasts_it():
    source = ("from peft import prepare_model_for_kbit_training\nimport transformers\n"
              "model = transformers.AutoModelForCausalLM.from_pretrained('m')\n"
              "model = prepare_model_for_kbit_training(model)\nloss = model(x).loss\nloss.backward()\n")
    settings = scan_source(source=source).settings()
    assert settings["precision.llm_fp32_upcast"] is True
    assert settings["components.llm.checkpointing"] is False  # only a k-bit model gets it switched on


# ------------------------------------------------------------------ if tests, InternVL-style scripts

def test_findings_under_if_apply_only_when_the_test_holds_with_the_dataclass_defaults():
    scan = scan_script(path=SCRIPTS / "internvl_style.py")
    found = by_name(scan)
    liger = found["apply_liger_kernel_to_qwen2"][0]
    assert liger.line == 31 and liger.settings == () and liger.status == "not taken"
    assert "not taken with the defaults" in liger.note and "a command-line value may differ" in liger.note
    head = found["trained in place"][0]
    assert head.settings == () and head.status == "not taken"
    assert "stack.loss" not in scan.settings() and "stack.embeddings_training" not in scan.settings()
    vision_lora = found["wrap_backbone_lora"][0]  # if os.environ.get(...): not known statically
    assert vision_lora.status == "unknown" and vision_lora.settings == ()
    assert "depends on os.environ.get('VISION_LORA'): assumed not taken; pass the setting yourself" in vision_lora.note
    assert scan.to_dict()["findings"][0]["condition"] in ("always", "taken", "not taken", "unknown")


def test_conditions_literals_names_defaults_and_operators():
    source = ("import torch\nfrom transformers import Trainer\nON = True\n"
              "def train(flag=False):\n"
              "    if ON and not flag:\n        model.gradient_checkpointing_enable()\n"
              "    if flag or 2 > 3:\n        apply_liger_kernel_to_llama()\n"
              "    else:\n        model.vision_model.requires_grad_(False)\n"
              "    Trainer(model=model).train()\n")
    found = by_name(scan_source(source=source))
    assert found["gradient_checkpointing_enable"][0].status == "taken"
    assert dict(found["gradient_checkpointing_enable"][0].settings)["components.llm.checkpointing"] is True
    assert found["apply_liger_kernel_to_llama"][0].status == "not taken"
    assert found["frozen"][0].status == "taken" and "else of if" in found["frozen"][0].note
    assert dict(found["frozen"][0].settings)["components.vision.train"] == "frozen"


def test_a_checkpointing_switch_not_taken_leaves_transformers_default_off():
    source = ("from transformers import Trainer, TrainingArguments\nimport os\n"
              "if os.environ.get('GC'):\n    model.gradient_checkpointing_enable()\n"
              "if False:\n    model.language_model._set_gradient_checkpointing()\n"
              "Trainer(model=model, args=TrainingArguments(output_dir='o'))\n")
    found = by_name(scan_source(source=source))
    assert found["gradient_checkpointing_enable"][0].status == "unknown"
    assert "gradient checkpointing" not in found  # unknown: the base plan's is kept, no "off" claimed
    found = by_name(scan_source(source=source.replace("os.environ.get('GC')", "0")))
    assert found["gradient checkpointing"][0].settings == (("components.llm.checkpointing", False),)


def test_hf_argument_parser_means_no_engine_or_checkpointing_claims():
    scan = scan_script(path=SCRIPTS / "internvl_style.py")
    found = by_name(scan)
    assert found["TrainingArguments"][0].value == "from the command line" and found["TrainingArguments"][0].line == 28
    assert "HfArgumentParser, line 28" in found["TrainingArguments"][0].note
    assert "engine" not in found and "engine" not in scan.settings() and "stack.autocast" not in scan.settings()
    source = ("from transformers import HfArgumentParser, Trainer, TrainingArguments\n"
              "args, = HfArgumentParser((TrainingArguments,)).parse_args_into_dataclasses()\n"
              "model = M.from_pretrained('x', torch_dtype=torch.float32)\nTrainer(model=model, args=args)\n")
    found = by_name(scan_source(source=source))
    assert found["gradient checkpointing"][0].value == "not read" and found["gradient checkpointing"][0].settings == ()
    assert found["precision"][0].value == "not read" and "engine" not in found


def test_checkpointing_by_attribute_and_private_call():
    found = by_name(scan_script(path=SCRIPTS / "internvl_style.py"))
    vision = found["gradient_checkpointing (vision)"][0]
    assert vision.settings == (("components.vision.checkpointing", True),)
    llm = found["_set_gradient_checkpointing"][0]
    assert dict(llm.settings) == {"components.llm.checkpointing": True, "stack.checkpoint_scope": "components"}
    source = ("from transformers import Trainer\nmodel._set_gradient_checkpointing(False)\n"
              "module.encoder.gradient_checkpointing = True\nTrainer(model=model)\n")
    found = by_name(scan_source(source=source))
    assert dict(found["_set_gradient_checkpointing"][0].settings) == {"components.llm.checkpointing": False}
    assert found[".gradient_checkpointing ="][0].settings == ()  # module.encoder: which component is not known
    assert "pass components.<x>.checkpointing yourself" in found[".gradient_checkpointing ="][0].note


def test_internvl_lora_wrappers_and_freezing_make_a_valid_plan():
    scan = scan_script(path=SCRIPTS / "internvl_style.py")
    settings = scan.settings()
    assert settings["components.llm.train"] == "lora" and settings["components.llm.lora.rank"] == 16
    assert settings["components.llm.lora.alpha"] == 32 and settings["stack.adapter_dtype"] == "fp32"
    assert settings["components.vision.train"] == "frozen"
    assert "peft" not in by_name(scan)  # the wrapper is taken: no "trains fully" conclusion
    plan = plan_of(scan)
    assert plan.components.llm.train == "lora" and plan.components.llm.lora.rank == 16
    assert plan.components.vision.train == "frozen" and plan.components.vision.checkpointing
    assert plan.components.llm.checkpointing and plan.stack.checkpoint_scope == "components"
    source = ("from transformers import Trainer\nUSE = 0\n"
              "if USE:\n    model.wrap_llm_lora(r=USE)\n"
              "def _freeze(m):\n    for n, p in m.named_parameters():\n        p.requires_grad = False\n"
              "_freeze(model.mlp1)\n_freeze(model.language_model)\nTrainer(model=model)\n")
    scan = scan_source(source=source)
    found = by_name(scan)
    assert found["wrap_llm_lora"][0].status == "not taken" and found["peft"][0].value == "none"
    assert [f.value for f in found["frozen"]] == ["projector", "llm"]
    plan = plan_of(scan)
    assert plan.components.llm.train == "frozen" and plan.components.projector.train == "frozen"
