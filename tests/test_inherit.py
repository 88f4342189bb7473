"""Plans that inherit (`from:`), the seed plans written as changes, and DeepSpeed JSON read as a plan."""

import json

import pytest

from memplan.spec.loading import InputError, load_plan, read_document, plan_path
from memplan.spec.plan import Plan


def _without_names(plan: Plan) -> dict:
    return plan.model_dump(exclude={"name", "description"})


def _changed(plan: Plan, **sections) -> dict:
    dump = _without_names(plan)
    for section, update in sections.items():
        dump[section] = {**dump[section], **update} if isinstance(update, dict) else update
    return dump


def test_plan_a_is_the_baseline_with_one_line_changed():
    text = plan_path("plans/seed/plan-a.yaml").read_text()
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body[2:] == ["from: baseline", "inputs: {sam2_resolution: 512}  # was 1024 (plan A)"]
    baseline = load_plan("seed/baseline")
    assert _without_names(load_plan("seed/plan-a")) == _changed(
        baseline, inputs={**baseline.inputs.model_dump(), "sam2_resolution": 512})


def test_seed_plans_inherit_what_they_used_to_repeat():
    baseline = load_plan("seed/baseline")
    official = load_plan("sa2va-official")
    assert baseline.components == official.components and baseline.inputs == official.inputs
    assert baseline.precision == official.precision and baseline.model == "sa2va-8b"
    assert (baseline.hardware.num_gpus, baseline.hardware.vram_gib, baseline.hardware.host_ram_gib,
            baseline.hardware.gpu) == (4, 24, 128, "rtx-3090")
    assert (baseline.engine.offload_optimizer, baseline.engine.contiguous_gradients,
            baseline.engine.reduce_bucket_size) == ("cpu", False, 100_000_000)
    plan_b = load_plan("seed/plan-b")
    assert (plan_b.engine.zero_stage, plan_b.engine.offload_params, plan_b.engine.contiguous_gradients,
            plan_b.engine.reduce_bucket_size, plan_b.engine.allgather_bucket_size) == (3, "cpu", True, 500_000_000,
                                                                                     500_000_000)
    assert load_plan("seed/plan-c").components.sam2_decoder.train == "frozen"
    assert load_plan("seed/plan-c").components.llm == baseline.components.llm
    assert load_plan("seed/plan-d").mode == "inference"
    assert load_plan("seed/plan-d").name == "plan-d"  # the child's name, not the base's


def test_a_partial_plan_inherits_the_official_recipe(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("from: sa2va-official\nhardware: {num_gpus: 2}\ncomponents:\n  llm: {lora: {rank: 16}}\n")
    plan = load_plan(path)
    official = load_plan("sa2va-official")
    assert plan.name == "mine" and plan.hardware.num_gpus == 2
    assert plan.hardware.vram_gib == official.hardware.vram_gib  # deep merge keeps the rest of the section
    assert plan.components.llm.lora.rank == 16 and plan.components.llm.lora.alpha == official.components.llm.lora.alpha
    assert plan.components.llm.modules_to_save == official.components.llm.modules_to_save
    assert plan.description == official.description


def test_a_pytorch_child_drops_the_bases_deepspeed_knobs(tmp_path):
    path = tmp_path / "ddp.yaml"
    path.write_text("from: sa2va-official\nengine: {kind: pytorch}\n")
    plan = load_plan(path)
    assert (plan.engine.kind, plan.engine.zero_stage, plan.engine.overlap_comm) == ("pytorch", 0, None)



def test_an_fsdp2_child_keeps_none_of_the_bases_deepspeed_engine(tmp_path):
    """from: the (DeepSpeed) official recipe with engine.kind fsdp2: the same plan as --engine fsdp2."""
    from memplan.spec.flags import plan_from_flags

    path = tmp_path / "fsdp.yaml"
    path.write_text("from: sa2va-official\nengine: {kind: fsdp2}\n")
    plan = load_plan(path)
    assert plan.engine == plan_from_flags(None, engine="fsdp2").engine


@pytest.mark.parametrize("text, message", [
    ("from: 3\n", "from=3: expected the name or path"),
    ("from: no-such-plan\n", "no such file or shipped plan"),
    ("from: loop\n", "inherits from itself"),
])
def test_bad_inheritance_is_one_line(tmp_path, text, message):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        load_plan(path)
    assert "\n" not in str(caught.value)


def _deepspeed_file(tmp_path, config: dict):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return path


def test_a_deepspeed_config_is_read_as_the_engine_section(tmp_path):
    path = _deepspeed_file(tmp_path, {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": "auto", "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                              "offload_param": {"device": "cpu"}, "overlap_comm": True,
                              "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": 1000}})
    plan = load_plan(path)
    official = load_plan("sa2va-official")
    assert (plan.engine.kind, plan.engine.zero_stage, plan.engine.offload_optimizer, plan.engine.offload_params,
            plan.engine.overlap_comm, plan.engine.stage3_prefetch_bucket_size) == ("deepspeed", 3, "cpu", "cpu", True, 1000)
    assert plan.engine.reduce_bucket_size == official.engine.reduce_bucket_size  # "auto": the recipe's
    assert plan.inputs.micro_batch == 2 and plan.precision.compute == "bf16"
    assert plan.components == official.components and plan.name == "ds"


def test_the_emitted_deepspeed_config_round_trips_to_its_engine(tmp_path):
    from memplan.integrations.deepspeed import deepspeed_config

    plan_b = load_plan("seed/plan-b")
    path = _deepspeed_file(tmp_path, deepspeed_config(plan_b))
    assert load_plan(path).engine == plan_b.engine


def test_a_bad_deepspeed_value_names_the_field(tmp_path):
    path = _deepspeed_file(tmp_path, {"zero_optimization": {"stage": 7}})
    with pytest.raises(InputError, match="zero_stage=7"):
        load_plan(path)
    path = _deepspeed_file(tmp_path, {"zero_optimization": {"stage": 2}, "bf16": {"enabled": "yes"}})
    with pytest.raises(InputError, match="bf16.enabled='yes'"):
        load_plan(path)


def test_a_plan_json_is_still_a_plan(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"name": "p", "engine": {"kind": "deepspeed", "zero_stage": 1}}))
    assert load_plan(path).engine.zero_stage == 1
    assert read_document(path)["name"] == "p"
