"""A step-time model good enough to rank plans: FLOPs at a rated throughput, plus data movement.

One training step on one GPU (one micro-batch) costs

    compute   = (forward + backward + recompute FLOPs) / (bf16_tflops x UTILIZATION)
    comm      = ZeRO / data-parallel collectives over NVLink or PCIe (exposed part only)
    offload   = host <-> device copies over PCIe (optimizer and parameter offload)
    optimizer = the optimizer step: CPU Adam on the host, or a memory-bound GPU step

FLOPs (2 per multiply-add; P parameters that multiply every token, T tokens):

- forward 2PT for every matmul weight; backward 2PT for the activation gradients of every weight
  on the gradient path plus 2 P_t T for the weight gradients of trained weights, so a fully trained
  model costs the familiar 6PT (Kaplan et al. 2020, arXiv 2001.08361 sec. 2.1; Hoffmann et al. 2022,
  arXiv 2203.15556 app. F) and a frozen LoRA base 4PT; parts without a graph (frozen, nothing
  trained upstream: the vision tower and SAM2 image encoder in the recipe) cost forward 2PT only;
- attention scores and values: 4 s^2 d per layer and sequence, halved when causal (Korthikanti
  et al. 2022, arXiv 2205.05198 sec. 4; the same count as Chinchilla's), backward twice forward;
- activation checkpointing recomputes each checkpointed layer's forward once during backward:
  + 2PT + attention (Korthikanti et al. 2022: full recomputation adds one forward pass);
- token counts: LLM T = micro-batch x sequence (image tokens included); vision T = tiles x 1025
  (1024 patches + CLS per 448px tile); projector 256 merged tokens per tile; SAM2 Hiera stage i
  at resolution R runs (R/4/2^i)^2 tokens per image (windowed attention w_i^2 per token, global
  blocks s^2); the mask decoder runs on (R/16)^2 image tokens per object.

Data movement (bytes per GPU per step, over the link's rated bandwidth x LINK_EFFICIENCY):

- optimizer offload (ZeRO-Offload, arXiv 2101.06840): gradients down and updated parameters up,
  2 + 2 bytes per trainable parameter of this rank's partition (P_t / N at ZeRO >= 1);
- parameter offload (ZeRO-Infinity, arXiv 2104.07857): the rank's parameter partition up for
  every pass that gathers parameters: forward and backward, and the recompute with
  checkpointing, P x e / N each;
- data parallel (Patarasuk & Yuan 2009 ring all-reduce): 2 (N-1)/N x gradient bytes; ZeRO-1/2 the
  same volume as reduce-scatter + all-gather of updated parameters; ZeRO-3 reduce-scatters the
  gradients and all-gathers every parameter 3 times (forward, recompute, backward; 2 without
  checkpointing) (N-1)/N x P x e (Rajbhandari et al. 2019, arXiv 1910.02054 sec. 7);
  each bucket launch also costs COLLECTIVE_LATENCY_S. With overlap_comm the gradient reduction
  hides behind the backward compute (what DeepSpeed's overlap_comm overlaps); ZeRO-3's parameter
  gathers are counted on the critical path (a Hugging Face model's many small modules leave the
  prefetcher little to overlap, and with parameter offload each gather waits for its PCIe copy);
- CPU Adam: CPU_ADAM_PARAMS_PER_S trainable parameters per second per process (DeepSpeedCPUAdam,
  ZeRO-Offload paper fig. 6: about 1e9 parameters/s on a server socket); on the GPU the step is
  memory bound: GPU_ADAM_BYTES_PER_PARAM bytes read and written per trainable parameter.

The model is for ranking plans, not for predicting wall-clock: `rank_check` compares it with the
step times in probe records (Spearman rank correlation and the median measured/predicted ratio).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from memplan.estimate.context import Context, build_context
from memplan.spec.gpus import GpuSpec, gpu_for, match_device_name
from memplan.spec.plan import Engine, Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Component

# Model FLOPs utilisation: the fraction of the rated dense bf16 throughput a Hugging Face
# transformers training step achieves on the matmuls counted above. 30-45% is typical of
# unfused HF training of 1-15B models at these sequence lengths (PaLM reports 46% MFU for a
# hand-tuned stack, Chowdhery et al. 2022 arXiv 2204.02311 table 3; Megatron-LM 39-52%,
# Narayanan et al. 2021 arXiv 2104.04473): one global constant, 0.35.
UTILIZATION = 0.35
# Achieved / rated bandwidth of PCIe, NVLink and device memory for large transfers and NCCL
# collectives (NCCL bus bandwidth is typically 70-85% of the link's rate).
LINK_EFFICIENCY = 0.75
COLLECTIVE_LATENCY_S = 50e-6  # per bucket launch (NCCL ring over PCIe, tens of microseconds)
CPU_ADAM_PARAMS_PER_S = 1e9  # DeepSpeedCPUAdam, per process
GPU_ADAM_BYTES_PER_PARAM = 30  # fp32 master, m, v read+write (24) + grad read (4) + 16-bit copy (2)


class Flops(NamedTuple):
    forward: float
    backward: float
    recompute: float


@dataclass(frozen=True)
class Workload:
    """What one step asks of one GPU, independent of the hardware and the engine's knobs
    (the FLOP sums are stored: `memplan search` times tens of thousands of candidates)."""

    flops: dict[Component, Flops]
    micro_batch: int
    params: int  # every parameter (ZeRO-3 gathers them)
    trainable: int
    checkpointing: bool
    training: bool
    compute_bytes: int
    forward_flops: float = 0.0
    backward_flops: float = 0.0  # activation and weight gradients, recompute excluded
    recompute_flops: float = 0.0

    @property
    def total_flops(self) -> float:
        return self.forward_flops + self.backward_flops + self.recompute_flops


@dataclass(frozen=True)
class StepTime:
    """Seconds per step on one GPU and where they go (keys: compute, recompute, comm, offload,
    optimizer); per_sample divides by the micro-batch (gradient accumulation keeps the batch)."""

    seconds: float
    breakdown: dict[str, float]
    micro_batch: int
    gpu: str
    flops: float = field(default=0.0)

    @property
    def per_sample(self) -> float:
        return self.seconds / self.micro_batch

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "per_sample_seconds": self.per_sample, "gpu": self.gpu,
                "flops": self.flops, "breakdown": dict(self.breakdown)}


# ---------------------------------------------------------------- FLOPs per component
def _dense(p_matmul: float, p_trained: float, tokens: float, *, graph: bool, recompute: bool,
           attention_forward: float = 0.0) -> Flops:
    """Forward 2PT (+ attention); backward 2PT activation grads + 2 P_t T weight grads (+ 2x the
    attention) when the part is on the gradient path; recompute one more forward when checkpointed."""
    forward = 2 * p_matmul * tokens + attention_forward
    if not graph:
        return Flops(forward, 0.0, 0.0)
    backward = 2 * p_matmul * tokens + 2 * p_trained * tokens + 2 * attention_forward
    return Flops(forward, backward, forward if recompute else 0.0)


def _llm_flops(ctx: Context) -> Flops:
    llm, part, inputs = ctx.profile.llm, ctx.plan.components.llm, ctx.plan.inputs
    groups = llm.param_groups()
    layers = groups["attention"] + groups["mlp"]
    head = llm.vocab_size * llm.hidden_size  # logits matmul (tied or not)
    adapters = llm.lora_params(part.lora.rank, part.lora.targets) if part.train == "lora" else 0
    trains = ctx.training and part.train != "frozen"
    body_trained = (layers if part.train == "full" else adapters) if trains else 0
    head_trained = head if trains and (part.train == "full" or "lm_head" in part.modules_to_save) else 0
    tokens = inputs.micro_batch * inputs.text_tokens
    s = inputs.text_tokens
    attention = llm.num_layers * inputs.micro_batch * 4 * s * s * llm.q_dim / 2  # causal
    graph = ctx.graph.get(Component.LLM, False)
    body = _dense(layers + adapters, body_trained, tokens, graph=graph, recompute=part.checkpointing,
                  attention_forward=attention)
    logits = _dense(head, head_trained, tokens, graph=graph, recompute=False)
    return Flops(body.forward + logits.forward, body.backward + logits.backward, body.recompute)


def _vision_flops(ctx: Context) -> Flops:
    v, inputs = ctx.profile.vision, ctx.plan.inputs
    groups = v.param_groups()
    tiles = inputs.micro_batch * (inputs.tiles + inputs.frames)
    s = v.tokens_per_tile
    attention = v.num_layers * tiles * 4 * s * s * v.hidden_size  # bidirectional
    part = ctx.parts[Component.VISION]
    return _dense(groups["attention"] + groups["mlp"], part.trainable, tiles * s,
                  graph=ctx.graph.get(Component.VISION, False), recompute=ctx.plan.components.vision.checkpointing,
                  attention_forward=attention)


def _projector_flops(ctx: Context) -> Flops:
    inputs = ctx.plan.inputs
    tokens = inputs.micro_batch * (inputs.tiles + inputs.frames) * ctx.profile.image_tokens_per_tile
    part = ctx.parts[Component.PROJECTOR]
    return _dense(part.total, part.trainable, tokens, graph=ctx.graph.get(Component.PROJECTOR, False), recompute=False)


def _sam2_encoder_flops(ctx: Context) -> Flops:
    """Hiera: per block 12 d^2 matmul weights (qkv 3d^2, proj d^2, MLP 8d^2) at the stage's
    (R/4/2^i)^2 tokens; windowed attention 4 s w^2 d, global blocks 4 s^2 d; neck 1x1 convs."""
    sam, inputs = ctx.profile.sam2, ctx.plan.inputs
    r = inputs.sam2_resolution
    flops, block = 0.0, 0
    for stage, (blocks, window, dim) in enumerate(zip(sam.stages, sam.window_spec, sam.stage_dims)):
        side = r // 4 // 2**stage
        tokens = side * side
        for _ in range(blocks):
            attended = tokens if block in sam.global_attention_blocks else min(tokens, window * window)
            flops += 2 * 12 * dim * dim * tokens + 4 * tokens * attended * dim
            block += 1
        flops += 2 * dim * sam.neck_dim * tokens
    flops *= inputs.micro_batch
    part = ctx.parts[Component.SAM2_ENCODER]
    graph = ctx.graph.get(Component.SAM2_ENCODER, False)
    trained_share = part.trainable / part.total if part.total else 0.0
    return Flops(flops, (flops + flops * trained_share) if graph else 0.0, 0.0)


def _sam2_decoder_flops(ctx: Context) -> Flops:
    inputs = ctx.plan.inputs
    tokens = inputs.micro_batch * inputs.objects * (inputs.sam2_resolution // 16) ** 2
    part = ctx.parts[Component.SAM2_DECODER]
    return _dense(part.total, part.trainable, tokens, graph=ctx.graph.get(Component.SAM2_DECODER, False),
                  recompute=False)


def _seg_head_flops(ctx: Context) -> Flops:
    inputs = ctx.plan.inputs
    part = ctx.parts[Component.SEG_HEAD]
    return _dense(part.total, part.trainable, inputs.micro_batch * inputs.objects,
                  graph=ctx.graph.get(Component.SEG_HEAD, False), recompute=False)


FLOP_COUNTERS = {
    Component.LLM: _llm_flops,
    Component.VISION: _vision_flops,
    Component.PROJECTOR: _projector_flops,
    Component.SAM2_ENCODER: _sam2_encoder_flops,
    Component.SAM2_DECODER: _sam2_decoder_flops,
    Component.SEG_HEAD: _seg_head_flops,
}


def workload(profile: Profile, plan: Plan) -> Workload:
    """FLOPs per component and the parameter counts the data movement needs."""
    ctx = build_context(profile, plan)
    flops = {c: FLOP_COUNTERS[c](ctx) for c in ctx.parts}
    return Workload(
        flops=flops, micro_batch=plan.inputs.micro_batch,
        params=sum(p.total for p in ctx.parts.values()), trainable=ctx.total_trainable,
        checkpointing=any(plan.components.get(c).checkpointing for c in ctx.parts),
        training=ctx.training, compute_bytes=ctx.compute_bytes,
        forward_flops=sum(f.forward for f in flops.values()),
        backward_flops=sum(f.backward for f in flops.values()),
        recompute_flops=sum(f.recompute for f in flops.values()),
    )


# ---------------------------------------------------------------- time
def _bandwidth(gbps: float) -> float:
    return gbps * 1e9 * LINK_EFFICIENCY


def time_step(work: Workload, engine: Engine, *, num_gpus: int, gpu: GpuSpec) -> StepTime:
    """Seconds of one step: compute + exposed communication + offload copies + optimizer step."""
    rate = gpu.bf16_tflops * 1e12 * UTILIZATION
    forward_s = work.forward_flops / rate
    recompute_s = work.recompute_flops / rate
    backward_s = work.backward_flops / rate
    e = work.compute_bytes
    deepspeed = engine.kind == "deepspeed"
    stage = engine.zero_stage if deepspeed else 0
    n = num_gpus
    shard = n if stage >= 1 else 1
    link = _bandwidth(gpu.collective_gbps(n))
    pcie = _bandwidth(gpu.pcie_gbps)
    comm_s = offload_s = optimizer_s = 0.0

    passes = (3 if work.checkpointing else 2) if work.training else 1  # ZeRO-3 parameter passes
    if deepspeed and stage == 3 and engine.offload_params != "none":  # the partition up, every pass
        offload_s += passes * work.params * e / n / pcie
    if stage == 3 and n > 1:  # gathers: forward (+ backward, + recompute when checkpointing)
        gather_bytes = passes * (n - 1) / n * work.params * e
        launches = passes * math.ceil(work.params / max(engine.stage3_prefetch_bucket_size, 1))
        comm_s += gather_bytes / link + launches * COLLECTIVE_LATENCY_S  # on the critical path

    if work.training and work.trainable:
        grad_bytes = work.trainable * e
        if n > 1:
            reduce_launches = math.ceil(work.trainable / max(engine.reduce_bucket_size, 1))
            # stage 0 (DDP, BF16_Optimizer): all-reduce; ZeRO-1/2/3: reduce-scatter
            volume = 2 * (n - 1) / n if stage == 0 else (n - 1) / n
            reduce_s = volume * grad_bytes / link + reduce_launches * COLLECTIVE_LATENCY_S
            post_s = 0.0
            if stage in (1, 2):  # all-gather of the updated parameters after the step
                gather_launches = math.ceil(work.trainable / max(engine.allgather_bucket_size, 1))
                post_s = (n - 1) / n * work.trainable * e / link + gather_launches * COLLECTIVE_LATENCY_S
            hidden = backward_s + recompute_s if (engine.overlap and deepspeed) else 0.0
            comm_s += max(0.0, reduce_s - hidden) + post_s
        partition = work.trainable / shard
        if deepspeed and engine.offload_optimizer != "none":
            offload_s += (2 + 2) * partition / pcie  # 16-bit grads down, 16-bit params up
            optimizer_s = partition / CPU_ADAM_PARAMS_PER_S
        else:
            optimizer_s = GPU_ADAM_BYTES_PER_PARAM * partition / _bandwidth(gpu.memory_gbps)

    breakdown = {"compute": forward_s + backward_s, "recompute": recompute_s, "comm": comm_s,
                 "offload": offload_s, "optimizer": optimizer_s}
    return StepTime(sum(breakdown.values()), breakdown, work.micro_batch, gpu.name, work.total_flops)


def step_time(profile: Profile, plan: Plan, gpu: GpuSpec | None = None) -> StepTime:
    """Seconds per step of ``plan`` on its GPU (plan.hardware.gpu, or the catalogued card whose
    VRAM is nearest the plan's)."""
    gpu = gpu or gpu_for(plan.hardware.gpu, plan.hardware.vram_gib)
    return time_step(workload(profile, plan), plan.engine, num_gpus=plan.hardware.num_gpus, gpu=gpu)


# ---------------------------------------------------------------- checking the ranking on probes
@dataclass(frozen=True)
class RankCheck:
    """Predicted vs measured step times over probe records."""

    pairs: list[dict[str, Any]]  # run_id, plan, gpu, measured_s, predicted_s, ratio
    spearman: float | None  # rank correlation (None with fewer than 2 records or no spread)
    median_ratio: float | None  # median measured / predicted
    skipped: list[str]  # run ids without usable step times, with the reason

    def summary(self) -> str:
        rho = "n/a" if self.spearman is None else f"{self.spearman:.3f}"
        ratio = "n/a" if self.median_ratio is None else f"{self.median_ratio:.2f}"
        return (f"{len(self.pairs)} records: Spearman rho {rho}, median measured/predicted {ratio}"
                f"{f'; skipped {len(self.skipped)}' if self.skipped else ''}")


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks."""
    if len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if not sxx or not syy:
        return None
    return sxy / math.sqrt(sxx * syy)


def measured_step_seconds(record: dict[str, Any]) -> float | None:
    """Median over ranks of each rank's last step (the steady state). Earlier steps are warm-up:
    the first builds kernels and optimizer state, and under ZeRO-3 the second took 30-35 s on H100s
    while DeepSpeed recorded its parameter-fetch trace (steps 2.1 s and less after)."""
    times = []
    for rank in record.get("ranks") or []:
        steps = [float(t) for t in rank.get("step_times_s") or [] if t is not None]
        if steps:
            times.append(steps[-1])
    return statistics.median(times) if times else None


def rank_check(records: Iterable[dict[str, Any]]) -> RankCheck:
    """Compare the model's step times with probe records (memplan.probe.records.read_records):
    each record's profile and plan dumps are re-validated and timed on the record's GPU
    (environment.gpu_name matched to the catalogue, else the plan's)."""
    pairs, skipped = [], []
    for record in records:
        run_id = str(record.get("run_id"))
        if record.get("status") != "ok":
            skipped.append(f"{run_id}: status {record.get('status')}")
            continue
        measured = measured_step_seconds(record)
        if not measured:
            skipped.append(f"{run_id}: no step times")
            continue
        try:
            profile = Profile.model_validate(record["profile"])
            plan = Plan.model_validate(record["plan"])
        except (KeyError, ValueError) as error:
            skipped.append(f"{run_id}: {str(error).splitlines()[0]}")
            continue
        environment = record.get("environment") or {}
        gpu = match_device_name(environment.get("gpu_name")) or gpu_for(plan.hardware.gpu, plan.hardware.vram_gib)
        predicted = step_time(profile, plan, gpu).seconds
        pairs.append({"run_id": run_id, "model": profile.name, "plan": plan.name, "gpu": gpu.name,
                      "measured_s": measured, "predicted_s": predicted, "ratio": measured / predicted})
    rho = spearman([p["predicted_s"] for p in pairs], [p["measured_s"] for p in pairs])
    ratio = statistics.median([p["ratio"] for p in pairs]) if pairs else None
    return RankCheck(pairs, rho, ratio, skipped)
