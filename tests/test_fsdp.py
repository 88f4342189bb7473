"""FSDP2 and multi-node plans: the per-rank estimate, host RAM per node, NCCL groups, hpZ, the emitted
accelerate config (through accelerate's own parser) and the fake world on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memplan.cli.main import app
from memplan.spec.flags import plan_from_flags
from memplan.estimate import fsdp, multinode
from memplan.estimate.context import build_context
from memplan.estimate.peak import estimate
from memplan.spec.loading import InputError, load_profile
from memplan.spec.plan import Plan
from memplan.spec.vocabulary import Category

runner = CliRunner()
TINY = Path(__file__).parent / "fixtures" / "profiles" / "tiny-sa2va.yaml"


def fsdp_plan(**flags) -> Plan:
    return plan_from_flags(None, engine="fsdp2", **flags)


def category(result, name: Category) -> int:
    return sum(t.bytes for t in result.peak.moment.terms if t.category is name)


# --------------------------------------------------------------------------- plan


def test_nodes_times_gpus_per_node():
    plan = plan_from_flags(None, nodes=4, gpus=8)
    assert (plan.hardware.num_gpus, plan.hardware.nodes, plan.hardware.gpus_per_node) == (32, 4, 8)
    assert Plan.model_validate({"hardware": {"nodes": 2, "gpus_per_node": 4}}).hardware.num_gpus == 8
    with pytest.raises(ValueError, match=r"num_gpus=6 != nodes\(2\) x gpus_per_node\(4\)"):
        Plan.model_validate({"hardware": {"nodes": 2, "gpus_per_node": 4, "num_gpus": 6}})


def test_fsdp_plan_round_trips_and_drops_deepspeed_defaults():
    plan = fsdp_plan(gpus=8)
    assert plan.engine.kind == "fsdp2" and plan.engine.zero_stage == 0 and plan.engine.fsdp.reshard_after_forward
    assert Plan.model_validate(plan.model_dump(mode="json")) == plan
    with pytest.raises(InputError, match="allowed with --engine fsdp2: none, all"):
        fsdp_plan(offload="optimizer")


# --------------------------------------------------------------------------- estimate


def test_sharded_states_scale_with_the_shard_group():
    profile = load_profile("sa2va-8b")
    small, large = (estimate(profile, fsdp_plan(gpus=g)) for g in (8, 16))
    for name in (Category.WEIGHTS, Category.OPTIMIZER_STATE):
        a, b = category(small, name), category(large, name)
        assert a and abs(a / b - 2) < 0.01, name


def test_hsdp_shards_within_a_node():
    profile = load_profile("sa2va-8b")
    hsdp = Plan.model_validate({**fsdp_plan(nodes=4, gpus=8).model_dump(mode="json"),
                                "engine": {"kind": "fsdp2", "fsdp": {"hsdp": True}}})
    ctx = build_context(profile, hsdp)
    assert fsdp.shard_group(ctx) == 8
    one_node = build_context(profile, fsdp_plan(gpus=8))
    assert fsdp.sharded_frozen(ctx, next(iter(ctx.parts))) == fsdp.sharded_frozen(one_node, next(iter(ctx.parts)))
    assert multinode.communicators(ctx) == [False, True]


def test_lora_rows_pad_once_the_group_exceeds_the_rank():
    """Every rank holds ceil(r/S) rows of each LoRA A (r x d_in): above S = r the shard stops shrinking."""
    profile = load_profile("qwen2.5-1.5b")
    plan = fsdp_plan(gpus=1024, lora_rank=16)
    ctx = build_context(profile, plan)
    llm = next(iter(ctx.parts))
    d_in_sum = sum(d_in for _, d_in, _ in profile.llm.linear_shapes()) * profile.llm.num_layers
    assert fsdp.sharded_trainable(ctx, llm) >= d_in_sum  # one row of every A per rank
    assert fsdp.sharded_trainable(ctx, llm) > ctx.parts[llm].trainable // 1024


def test_reshard_after_forward_off_keeps_every_unit():
    profile = load_profile("qwen2.5-1.5b")
    on = build_context(profile, fsdp_plan(gpus=8))
    off_plan = Plan.model_validate({**on.plan.model_dump(mode="json"),
                                    "engine": {"kind": "fsdp2", "fsdp": {"reshard_after_forward": False}}})
    off = build_context(profile, off_plan)
    units, _ = fsdp.unit_sizes(on)
    assert len(units) == profile.llm.num_layers + 1  # decoder layers + the tied embedding unit
    layers = profile.llm.num_layers * profile.llm.layer_params * 2  # bf16
    on_bytes, off_bytes = (fsdp.units_unsharded_bytes(c, after_forward=True) for c in (on, off))
    assert off_bytes > on_bytes + 0.9 * layers  # every layer stays unsharded, not just a neighbouring pair


def test_cpu_offload_moves_states_to_pinned_host_memory():
    profile = load_profile("sa2va-8b")
    on_gpu, offloaded = estimate(profile, fsdp_plan(gpus=8)), estimate(profile, fsdp_plan(gpus=8, offload="all"))
    assert category(offloaded, Category.OPTIMIZER_STATE) == 0 and category(on_gpu, Category.OPTIMIZER_STATE) > 0
    assert offloaded.host_bytes > on_gpu.host_bytes and 0 < offloaded.host_pinned_bytes < offloaded.host_bytes
    assert offloaded.to_dict()["per_node"]["host_pinned_bytes"] == offloaded.host_pinned_bytes


def test_offloaded_zero_state_is_shared_among_nodes():
    profile = load_profile("sa2va-8b")
    one, four = (estimate(profile, plan_from_flags(None, zero=3, offload="all", nodes=n, gpus=8)) for n in (1, 4))
    base = 8 * one.calibration.host_base_bytes
    assert abs((one.host_bytes - base) / (four.host_bytes - base) - 4) < 0.01


def test_inter_node_and_extra_groups_add_nccl_bytes():
    profile = load_profile("sa2va-8b")
    one, two = (estimate(profile, plan_from_flags(None, zero=3, nodes=n, gpus=16 // n)) for n in (1, 2))
    assert two.device_bytes - one.device_bytes == multinode.INTER_NODE_BUFFER_BYTES
    hpz = Plan.model_validate({**two_plan(), "engine": {"zero_stage": 3, "zero_hpz_partition_size": 8}})
    result = estimate(profile, hpz)
    assert result.device_bytes - two.device_bytes > result.calibration.nccl_bytes  # secondary copy + a group


def two_plan() -> dict:
    return plan_from_flags(None, zero=3, nodes=2, gpus=8).model_dump(mode="json")


def test_hpz_keeps_a_secondary_partition():
    profile = load_profile("sa2va-8b")
    plain = build_context(profile, plan_from_flags(None, zero=3, gpus=8))
    hpz = build_context(profile, Plan.model_validate({**plain.plan.model_dump(mode="json"),
                                                      "engine": {"zero_stage": 3, "zero_hpz_partition_size": 8}}))
    from memplan.estimate.buffers import hpz_secondary_bytes

    weights = sum(p.frozen * p.weight_bytes + p.trainable * p.trainable_bytes for p in hpz.parts.values())
    assert hpz_secondary_bytes(plain) == 0 and hpz_secondary_bytes(hpz) == -(-weights // 8)


def test_estimate_cli_multi_node_fsdp2():
    out = runner.invoke(app, ["estimate", "--nodes", "4", "--gpus", "8", "--engine", "fsdp2", "-m", "sa2va-26b",
                              "--vram", "80", "-f", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["num_gpus"] == 32 and data["per_node"]["gpus_per_node"] == 8
    assert any(row["category"] == "fsdp_buffers" for row in data["breakdown"])


# --------------------------------------------------------------------------- --emit-fsdp


@pytest.mark.parametrize("hsdp", [False, True])
def test_emitted_accelerate_config_parses_in_accelerate(tmp_path, monkeypatch, hsdp):
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    plan_file = tmp_path / "p.yaml"
    plan_file.write_text(f"engine: {{kind: fsdp2, fsdp: {{hsdp: {str(hsdp).lower()}, offload: true}}}}\n")
    target = tmp_path / "fsdp.yaml"
    out = runner.invoke(app, ["estimate", "--plan", str(plan_file), "--nodes", "2", "--gpus", "4", "-m", "sa2va-1b",
                              "--emit-fsdp", str(target)])
    assert out.exit_code == 0, out.output
    assert "accelerate launch --config_file" in out.output and "--machine_rank $NODE_RANK" in out.output
    config = load_config_from_file(str(target))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    args = launch_command_parser().parse_args(["--config_file", str(target), "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_", "PARALLELISM_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    assert plugin.transformer_cls_names_to_wrap == ["InternVLVisionLayer", "Qwen2DecoderLayer", "Sam2VisionModel"]
    assert (env.get("PARALLELISM_CONFIG_DP_REPLICATE_SIZE") == "2") is hsdp
    written = Plan.model_validate(__import__("yaml").safe_load((tmp_path / "fsdp.plan.yaml").read_text()))
    assert written.engine.fsdp.reduce_dtype == "compute" and written.engine.fsdp.embeddings_unit is False
    again = runner.invoke(app, ["estimate", "--plan", str(plan_file), "-m", "sa2va-1b", "--emit-fsdp", str(target)])
    assert again.exit_code == 2 and "--force" in again.output


def test_wrapped_class_names_exist_in_the_built_model():
    pytest.importorskip("transformers")
    from memplan.integrations.accelerate_fsdp import layer_classes
    from memplan.probe.apply import apply_plan
    from memplan.probe.build import build_model

    profile = load_profile(str(TINY))
    plan = tiny_fsdp_plan(2)
    names = {type(m).__name__ for m in apply_plan(build_model(profile, plan), plan).modules()}
    assert set(layer_classes(profile)) <= names


# --------------------------------------------------------------------------- the fake world on the CPU


def tiny_fsdp_plan(world: int) -> Plan:
    return Plan.model_validate({
        "engine": {"kind": "fsdp2"}, "precision": {"compute": "fp32"}, "hardware": {"num_gpus": world},
        "inputs": {"micro_batch": 1, "text_tokens": 64, "tiles": 1, "frames": 0, "sam2_resolution": 64, "objects": 1},
        "components": {"llm": {"train": "lora", "checkpointing": True, "lora": {"rank": 8, "alpha": 16},
                               "modules_to_save": ["embed_tokens", "lm_head"]}}})


def test_fake_world_on_cpu_holds_one_rank_of_n(tmp_path):
    """Rank 0 of 2 on the fake process group holds what rank 0 of a real 2-process FSDP2 run (torchrun,
    gloo) holds, and the estimate's shards.

    The CPU storage tracker misses FSDP2's in-place storage resizes (unsharded parameters are freed by
    resize_(0)), so phase peaks are not compared here; the shards are."""
    pytest.importorskip("transformers")
    from memplan.cli.probe import execute_probe
    from memplan.estimate import gradients, optimizer
    from memplan.probe.fake_world import run_fake_world

    profile, plan = load_profile(str(TINY)), tiny_fsdp_plan(2)
    record = run_fake_world(profile, plan, world_size=2, steps=1, device="cpu", command="pytest")
    assert record["status"] == "ok", record.get("error")
    assert record["fake_world"] == 2 and any("fake world 2" in note for note in record["notes"])
    measured = record["ranks"][0]["categories"]
    real = execute_probe(profile, plan, steps=1, device="cpu", out=tmp_path / "real.jsonl", timeout_s=240, command="pytest")
    assert real["status"] == "ok", real.get("error")
    real_rank0 = min(real["ranks"], key=lambda r: r["rank"])["categories"]
    for name in ("weights", "gradients", "optimizer_state"):
        assert measured[name] == real_rank0[name], name
    ctx = build_context(profile, plan)
    expected_grads = sum(gradients.gradient_bytes(ctx, c) for c in ctx.parts)
    expected_state = sum(optimizer.optimizer_state_bytes(ctx, c) for c in ctx.parts)
    assert 0.85 < measured["gradients"] / expected_grads <= 1.0
    assert 0.85 < measured["optimizer_state"] / expected_state <= 1.0


# --------------------------------------------------------------------------- search across engines and nodes


def test_engine_sweep_covers_every_choice_and_node_count():
    from memplan.planning.scale import ENGINE_CHOICES, fewest_nodes, node_counts, sweep

    profile = load_profile("sa2va-26b")
    cells = sweep(profile, plan_from_flags(None), gpus_per_node=8, vram_gib=24, max_nodes=64)
    assert node_counts(64) == (1, 2, 4, 8, 16, 32, 64)
    assert len(cells) == len(ENGINE_CHOICES) * 7 - 2  # HSDP needs two nodes
    by = {(c.choice, c.nodes): c for c in cells}
    assert by[("zero3", 8)].estimate.needed_bytes < by[("zero3", 1)].estimate.needed_bytes
    assert by[("fsdp2", 8)].estimate.needed_bytes < by[("fsdp2", 1)].estimate.needed_bytes
    assert by[("fsdp2", 8)].plan.engine.kind == "fsdp2" and by[("zero2", 8)].plan.engine.zero_stage == 2
    assert all(c.fits for c in fewest_nodes(cells))


def test_search_engines_cli_json(tmp_path):
    out = runner.invoke(app, ["search", "--engines", "--gpus", "8", "--vram", "80", "-m", "sa2va-8b", "--max-nodes", "4",
                              "--out", str(tmp_path), "-f", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "engines.json").read_text())
    assert {c["engine"] for c in data["cells"]} >= {"zero1", "zero3+offload", "fsdp2+offload", "hsdp"}
    assert {c["nodes"] for c in data["cells"]} == {1, 2, 4}


def test_compare_takes_fsdp2_plans(tmp_path):
    plan = tmp_path / "f.yaml"
    plan.write_text("engine: {kind: fsdp2, fsdp: {offload: true}}\nhardware: {nodes: 2, num_gpus: 16}\n")
    out = runner.invoke(app, ["compare", str(plan), "sa2va-official", "-m", "sa2va-8b", "--out", str(tmp_path), "-f", "json"])
    assert out.exit_code == 0, out.output


# --------------------------------------------------------------------------- moments of the step (fsdp-fake-world)


def _record_ctx(n: int):
    """The plan and profile of the h200 fsdp-fake-world run at N (Qwen2.5-1.5B, LoRA r64, tied
    embeddings with both modules_to_save copies, fp32 held states, bf16 param_dtype)."""
    path = Path(__file__).resolve().parents[1] / "reports" / "probes" / "h200-fsdp-fake-world.jsonl"
    from memplan.spec.loading import plan_from_document

    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["fake_world"] == n:
            return record, build_context(load_profile(record["model"]), plan_from_document(record["plan"], "record"))
    raise LookupError(n)


def _phase(result, name: str):
    return next(p for p in result.phases if p.phase.value == name)


def test_init_holds_each_unit_whole_before_it_is_sharded():
    """fully_shard moves a unit whole to the device, then shards it (_move_states_to_device,
    _init_sharded_param): at large N init is the largest unit (tied embeddings + two fp32 copies)."""
    _, ctx = _record_ctx(1024)
    llm = ctx.profile.llm
    whole_embeddings = 3 * llm.embedding_params * 4  # original + two copies, fp32 held
    assert 0.99 < fsdp.init_transient_bytes(ctx) / whole_embeddings <= 1.0
    _, small = _record_ctx(2)  # at N=2 the last decoder layer is sharded on top of almost every shard
    assert fsdp.init_transient_bytes(small) < whole_embeddings / 10
    offload = Plan.model_validate({**ctx.plan.model_dump(mode="json"),
                                   "engine": {"kind": "fsdp2", "fsdp": {"offload": True}}})
    assert fsdp.init_transient_bytes(build_context(ctx.profile, offload)) >= whole_embeddings


def test_tied_unit_reshards_after_lm_head_and_is_prefetched_at_backward_start():
    _, ctx = _record_ctx(8)
    order = fsdp.post_forward_order(ctx)
    assert order[-1] == fsdp.unit_sizes(ctx)[0][0]  # the tied unit: first to shard, last to finish forward
    assert fsdp.loss_unsharded_bytes(ctx) == 0
    assert fsdp.backward_start_unsharded_bytes(ctx) == 3 * ctx.profile.llm.embedding_params * 2  # bf16
    # the reduce-scatter of that unit runs after its reshard; its prefetched neighbour is the last layer
    assert fsdp.reduce_scatter_neighbour_bytes(ctx) == fsdp.units_unsharded_bytes(ctx) - fsdp.backward_start_unsharded_bytes(ctx)


def test_loss_backward_has_no_reduce_scatter_and_it_gets_its_own_moment():
    record, ctx = _record_ctx(8)
    result = estimate(ctx.profile, ctx.plan)
    backward = _phase(result, "backward")
    assert backward.moment.label == "LLM loss backward"
    rs = fsdp.reduce_scatter_bytes(ctx)
    assert all(t.bytes != rs for t in backward.moment.terms if t.category is Category.FSDP_BUFFERS)
    from memplan.estimate.phases import Shared

    shared = Shared(ctx)
    assert shared.buckets.total == 0 and shared.reduce_scatter.total >= rs
    assert shared.reduce_scatter.total < backward.total - shared.weights.total - shared.optimizer.total


@pytest.mark.parametrize("n", [2, 8, 64, 256, 1024])
def test_fsdp_fake_world_records_in_sample(n):
    """In-sample: the mechanisms were found on these records. init and backward within 2%; forward
    up to 7% low (about 0.2 GiB at the loss not explained)."""
    record, ctx = _record_ctx(n)
    result = estimate(ctx.profile, ctx.plan)
    measured = record["ranks"][0]["phases"]
    for phase in ("init", "forward", "backward"):
        ratio = _phase(result, phase).total / measured[phase]["max_allocated_bytes"]
        assert (0.93 if phase == "forward" else 0.98) < ratio < 1.01, (phase, ratio)


def test_fsdp2_unshards_as_the_estimate_says_on_cpu(monkeypatch):
    """Real FSDP2 on a fake world of 2 on the CPU, a tied embed/lm_head unit, two layer units and a
    root with a norm: at the loss every unit is resharded; when the loss's backward runs the tied
    unit is already unsharded (the root's pre-backward prefetch) and the layers are not."""
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from memplan.probe.distributed import release_distributed
    from memplan.probe.fake_world import init_fake_world

    def unsharded(module) -> bool:
        """Unsharded, or its all-gather issued (a prefetch: the output, the unit's size, is allocated
        and the copy-out waits for the unit's own pre-backward)."""
        state = fully_shard.state(module)
        groups = getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group]
        return all(g.is_unsharded or g._all_gather_result is not None for g in groups)

    seen: dict[str, list[bool]] = {}

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(_, x):
            return x.view_as(x)

        @staticmethod
        def backward(_, grad):
            seen["loss backward"] = [unsharded(m) for m in units]
            return grad

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(64, 16), nn.Linear(16, 64, bias=False)
            self.head.weight = self.embed.weight
            self.layers = nn.ModuleList([nn.Linear(16, 16) for _ in range(2)])
            self.norm = nn.LayerNorm(16)

        def forward(self, ids):
            h = self.embed(ids)
            for layer in self.layers:
                h = layer(h)
            logits = self.head(self.norm(h))
            seen["loss"] = [unsharded(m) for m in units]
            return nn.functional.cross_entropy(Probe.apply(logits).flatten(0, 1), ids.flatten())

    if dist.is_initialized():
        pytest.skip("a process group is already up")
    for name in ("RANK", "LOCAL_RANK"):  # init_fake_world sets them: restored after, for later Trainers
        monkeypatch.setenv(name, "0")
    init_fake_world(2)
    try:
        model = Tiny()
        mesh = init_device_mesh("cpu", (2,))
        fully_shard([model.embed, model.head], mesh=mesh)
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        units = [model.embed, model.layers[0], model.layers[1]]
        model(torch.randint(0, 64, (1, 8))).backward()
    finally:
        release_distributed()
    assert seen["loss"] == [False, False, False]
    assert seen["loss backward"] == [True, False, False]


# --------------------------------------------------------------------------- foreach_reduce and the root's reduce (accelerate, N = 1)


def test_foreach_reduce_peak_never_holds_the_unsharded_gradients_with_the_output():
    """max(U + I, I + O + C) (_fsdp_collectives.py foreach_reduce): U is freed after the copy-in,
    before O and its cast C exist. One rank, bf16 reduce of fp32 gradients: O = I = U, C = 2U, so the
    peak is 4U (U + I + O + C would be 5U); over S ranks O and C shrink as 1/S and U + I remains."""
    u = 1 << 30
    peak = fsdp.foreach_reduce_peak_bytes
    assert peak(unsharded_grad_bytes=u, input_bytes=u, output_bytes=u, cast_bytes=2 * u) == 4 * u
    for s in (2, 8, 1024):
        value = peak(unsharded_grad_bytes=u, input_bytes=u, output_bytes=u // s, cast_bytes=2 * u // s)
        assert value == max(2 * u, u + 3 * u // s)
    assert peak(unsharded_grad_bytes=u, input_bytes=u, output_bytes=u // 1024, cast_bytes=0) == 2 * u
    doubled = peak(unsharded_grad_bytes=2 * u, input_bytes=2 * u, output_bytes=2 * u, cast_bytes=4 * u)
    assert doubled == 2 * peak(unsharded_grad_bytes=u, input_bytes=u, output_bytes=u, cast_bytes=2 * u)


def _accelerate_record():
    from memplan.spec.loading import plan_from_document

    path = Path(__file__).resolve().parents[1] / "reports" / "probes" / "logs" / "h200-fsdp-accelerate-c.json"
    record = json.loads(path.read_text())
    return record, build_context(load_profile(record["model"]), plan_from_document(record["plan"], "record"))


def test_accelerate_root_reduce_runs_resharded_in_the_final_callback():
    """In-sample (docs/stacks.md 16): embeddings in the root make the root's reduce the largest; the
    root is resharded before it and the units left unsharded are SAM2's encoder (the root's
    backward-start prefetch, no graph) and the last ViT layer (the first LLM layer's prefetch)."""
    record, ctx = _accelerate_record()
    assert fsdp.root_reduces_largest(ctx) and fsdp.reduce_scatter_root_bytes(ctx) == 0
    units, _ = fsdp.unit_sizes(ctx)
    vit_layer = fsdp._unsharded(ctx, units[0])
    assert fsdp.reduce_scatter_neighbour_bytes(ctx) == fsdp.backward_start_unsharded_bytes(ctx) + vit_layer
    result = estimate(ctx.profile, ctx.plan)
    backward = _phase(result, "backward")
    measured = record["phases"]["backward"]["max_allocated_bytes"]
    assert 0.99 < backward.total / measured < 1.04, backward.total / measured  # +11.7% before
    from memplan.estimate.phases import Shared, backward_phase

    shared = Shared(ctx)
    rs_moment = (shared.weights.total + shared.optimizer.total + shared.reduce_scatter.total
                 + shared.gradients.total + shared.reduce_scatter_activations.total)
    assert 0.99 < rs_moment / measured < 1.02, rs_moment / measured
    assert backward_phase(ctx, shared).moment.label == "LLM loss backward"
    _, fake = _record_ctx(8)  # the probe's own wrapping: the tied embedding unit is the largest
    assert not fsdp.root_reduces_largest(fake)


def test_root_reduce_on_one_rank_holds_input_output_and_cast_not_the_gradients(monkeypatch):
    """Real FSDP2 on a world of one (fake group, CPU), MixedPrecisionPolicy(bf16, bf16, bf16) as
    accelerate sets it, a trainable fp32 embedding and head in the root, a frozen layer unit and a
    frozen unit run under no_grad: inside the root's foreach_reduce the live bytes rise by
    I + O + C - U (U freed before O), its own parameters are resharded, and the two units that ran no
    backward (the no_grad one, prefetched by the root; the frozen layer, prefetched by the trained
    one) are still all-gathered."""
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    import torch.distributed.fsdp._fully_shard._fsdp_param_group as param_group

    from memplan.probe.distributed import release_distributed
    from memplan.probe.fake_world import init_fake_world
    from memplan.probe.tracker import StorageTracker

    v, h = 1024, 64

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit, self.llm, self.enc = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
            self.vit.requires_grad_(False)
            self.enc.requires_grad_(False)
            self.llm.weight.requires_grad_(False)  # a frozen base with a trained part (LoRA's place)
            self.embed, self.head = nn.Embedding(v, h), nn.Linear(h, v, bias=False)

        def forward(self, ids, x):
            hidden = self.llm(self.embed(ids) + self.vit(x))
            loss = self.head(hidden).float().logsumexp(-1).mean()
            with torch.no_grad():
                encoded = self.enc(x)
            return loss + 0 * encoded.float().sum()

    if dist.is_initialized():
        pytest.skip("a process group is already up")
    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.setenv(name, "0")
    init_fake_world(1)
    seen = []
    try:
        model = Tiny()
        mesh = init_device_mesh("cpu", (1,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16,
                                  output_dtype=torch.bfloat16)
        for unit in (model.vit, model.llm, model.enc):
            fully_shard(unit, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        tracker = StorageTracker(device_type="cpu")
        tracker.track(model.parameters())
        original = param_group.foreach_reduce

        def gathered(unit) -> bool:
            group = fully_shard.state(unit)._fsdp_param_group
            return group._all_gather_result is not None or group.is_unsharded

        def traced(fsdp_params, grads, *args, **kwargs):
            numel = sum(g.numel() for g in grads)
            own = [p.all_gather_outputs[0].untyped_storage().nbytes() if p.all_gather_outputs else 0
                   for p in fsdp_params]
            units = [gathered(m) for m in (model.vit, model.llm, model.enc)]
            tracker.reset_peak()
            before = tracker.current()
            out = original(fsdp_params, grads, *args, **kwargs)
            seen.append((numel, tracker.peak() - before, own, units))
            return out

        monkeypatch.setattr(param_group, "foreach_reduce", traced)
        with tracker:
            model(torch.randint(0, v, (1, 8)), torch.randn(1, 8, h)).backward()
    finally:
        release_distributed()
    numel, rise, own, units = seen[-1]  # the root's, in the final callback
    assert numel == 2 * v * h
    u = i = o = 2 * numel  # bf16
    c = 4 * numel  # the fp32 sharded gradient
    assert rise == fsdp.foreach_reduce_peak_bytes(unsharded_grad_bytes=u, input_bytes=i, output_bytes=o,
                                                  cast_bytes=c) - u
    assert own == [0] * len(own)  # resharded before the reduce
    assert units == [True, False, True]  # vit and enc still all-gathered, llm done
