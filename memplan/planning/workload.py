"""What one training step asks of one GPU, before any hardware: FLOPs per kernel class, module calls,
and the parameters ZeRO-3 gathers. No torch; pure functions of (profile, plan).

FLOPs (2 per multiply-add; P parameters that multiply every token, T tokens):

- forward 2PT for every matmul weight; backward 2PT for the activation gradients of every weight on
  the gradient path plus 2 P_t T for the weight gradients of trained weights, so a fully trained model
  costs the familiar 6PT (Kaplan et al. 2020, arXiv 2001.08361 sec. 2.1; Hoffmann et al. 2022, arXiv
  2203.15556 app. F) and a frozen LoRA base 4PT; parts without a graph (frozen, nothing trained
  upstream: the vision tower and SAM2 encoder in the recipe) cost forward 2PT only;
- attention scores and values: 4 s^2 d per layer and sequence, halved when causal (Korthikanti et al.
  2022, arXiv 2205.05198 sec. 4), backward twice forward; kept apart from the GEMMs (its own kernel
  class: flash/SDPA kernels run at a different rate than dense matmuls);
- activation checkpointing recomputes each checkpointed layer's forward once during backward
  (Korthikanti et al. 2022: full recomputation adds one forward pass);
- tokens: LLM T = micro-batch x sequence; vision T = tiles x 1025 (1024 patches + CLS per 448px tile);
  projector 256 merged tokens per tile; SAM2 Hiera stage i at resolution R runs (R/4/2^i)^2 tokens
  (windowed attention w_i^2 per token, global blocks s^2); the mask decoder (R/16)^2 per object.

Kernel classes (each gets its own efficiency in memplan.planning.steptime): ``gemm`` (LLM matmuls,
logits, projector, seg head), ``attention`` (the LLM's s^2 term), ``vision`` (the ViT), ``sam2``
(Hiera encoder and mask decoder).

Module calls and ZeRO-3 gathers: DeepSpeed ZeRO-3 hooks every submodule and, before it runs, fetches
the module's own parameters that are partitioned (one ``all_gather_coalesced`` per module:
deepspeed/runtime/zero/partitioned_param_coordinator.py, fetch_sub_module and __all_gather_params_);
parameters of at most ``stage3_param_persistence_threshold`` elements stay whole on every rank and are
never gathered (deepspeed/runtime/zero/parameter_offload.py, mark_persistent_parameters). Every module
with parameters also costs framework time per call (Python dispatch and kernel launches), which is what
dominates small models on fast cards; it is counted as module calls per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from memplan.estimate.context import Context, build_context
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile
from memplan.spec.vocabulary import Component

KERNEL_CLASSES = ("gemm", "attention", "vision", "sam2")

# SAM2 mask decoder (transformers Sam2MaskDecoder(Sam2MaskDecoderConfig(hidden_size=256)), counted on the
# meta device with transformers 5.24): 67 modules own parameters; 4 own a tensor above 1e5 elements
# (the two-way transformer's MLP linears, 256 x 2048 = 524,288 each).
DECODER_MODULES = 67
DECODER_LARGE_TENSORS = (524_288,) * 4


class Flops(NamedTuple):
    forward: float
    backward: float
    recompute: float

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.recompute


class Modules(NamedTuple):
    """One component's modules with parameters: how many, and the tensors ZeRO-3 would gather."""

    count: int  # modules that own parameters (one framework call each per pass)
    tensors: tuple[tuple[int, int], ...]  # (tensor elements, how many such tensors) of every weight tensor


@dataclass(frozen=True)
class Workload:
    """What one step asks of one GPU, independent of the hardware and the engine's knobs (sums are
    stored: `memplan search` times tens of thousands of candidates)."""

    flops: dict[Component, Flops]
    micro_batch: int
    params: int  # every parameter
    trainable: int
    checkpointing: bool
    training: bool
    compute_bytes: int
    forward_flops: float = 0.0
    backward_flops: float = 0.0  # activation and weight gradients, recompute excluded
    recompute_flops: float = 0.0
    kernel_flops: dict[str, float] = field(default_factory=dict)  # KERNEL_CLASSES -> FLOPs per step
    eager_score_elements: float = 0.0  # attention score elements materialised per step (eager only)
    module_calls: int = 0  # module calls per step (forward + backward + recompute passes)
    passes: dict[Component, int] = field(default_factory=dict)  # passes that need the weights
    modules: dict[Component, Modules] = field(default_factory=dict)
    trainable_tensors: int = 0  # tensors the optimizer updates
    tokens: int = 0  # LLM tokens per step per GPU
    _gathers: dict[int, tuple[int, int]] = field(default_factory=dict, init=False, compare=False, repr=False)
    cache: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # steptime's per-card terms

    @property
    def total_flops(self) -> float:
        return self.forward_flops + self.backward_flops + self.recompute_flops

    def gathers(self, threshold: int) -> tuple[int, int]:
        """(all-gathers, gathered elements) per step under ZeRO-3 with this persistence threshold:
        every pass over a component gathers each of its modules holding a tensor above the threshold."""
        cached = self._gathers.get(threshold)
        if cached is not None:
            return cached
        count = elements = 0
        for component, part in self.modules.items():
            passes = self.passes.get(component, 0)
            large = [(n, k) for n, k in part.tensors if n > threshold]
            count += passes * sum(k for _, k in large)
            elements += passes * sum(n * k for n, k in large)
        self._gathers[threshold] = (count, elements)
        return count, elements


# ---------------------------------------------------------------- FLOPs per component
def _dense(p_matmul: float, p_trained: float, tokens: float, *, graph: bool, recompute: bool,
           attention_forward: float = 0.0) -> Flops:
    """Forward 2PT (+ attention); backward 2PT activation grads + 2 P_t T weight grads (+ 2x the
    attention) on the gradient path; recompute one more forward when checkpointed."""
    forward = 2 * p_matmul * tokens + attention_forward
    if not graph:
        return Flops(forward, 0.0, 0.0)
    backward = 2 * p_matmul * tokens + 2 * p_trained * tokens + 2 * attention_forward
    return Flops(forward, backward, forward if recompute else 0.0)


def _llm_attention(ctx: Context) -> float:
    """Causal attention forward: layers x b x 4 s^2 d / 2 (Korthikanti et al. 2022 sec. 4)."""
    llm, inputs = ctx.profile.llm, ctx.plan.inputs
    s = inputs.text_tokens
    return llm.num_layers * inputs.micro_batch * 4 * s * s * llm.q_dim / 2


def _llm_flops(ctx: Context, with_attention: bool = True) -> Flops:
    llm, part, inputs = ctx.profile.llm, ctx.plan.components.llm, ctx.plan.inputs
    groups = llm.param_groups()
    layers = groups["attention"] + groups["mlp"]
    head = llm.vocab_size * llm.hidden_size  # logits matmul (tied or not)
    adapters = llm.lora_params(part.lora.rank, part.lora.targets) if part.train == "lora" else 0
    trains = ctx.training and part.train != "frozen"
    body_trained = (layers if part.train == "full" else adapters) if trains else 0
    head_trained = head if trains and (part.train == "full" or "lm_head" in part.modules_to_save) else 0
    tokens = inputs.micro_batch * inputs.text_tokens
    attention = _llm_attention(ctx) if with_attention else 0.0
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
                  graph=ctx.graph.get(Component.VISION, False), recompute=ctx.stack.vision_checkpointing,
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
KERNEL_CLASS = {Component.LLM: "gemm", Component.PROJECTOR: "gemm", Component.SEG_HEAD: "gemm",
                Component.VISION: "vision", Component.SAM2_ENCODER: "sam2", Component.SAM2_DECODER: "sam2"}


# ---------------------------------------------------------------- modules and their weight tensors
def _llm_modules(ctx: Context) -> Modules:
    """Per decoder layer: 7 linears (q, k, v, o, gate, up, down) and 2 RMSNorms; LoRA adds A (r x d_in)
    and B (d_out x r) per wrapped linear (peft LoraLayer: lora_A, lora_B); embed_tokens, the final
    norm and lm_head (peft modules_to_save replaces a module by a wrapper holding a trained copy)."""
    llm, part = ctx.profile.llm, ctx.plan.components.llm
    layers, h = llm.num_layers, llm.hidden_size
    tensors: dict[int, int] = {}

    def add(numel: int, count: int) -> None:
        tensors[numel] = tensors.get(numel, 0) + count

    wrapped = 0
    for name, d_in, d_out in llm.linear_shapes():
        add(d_in * d_out, layers)
        if part.train == "lora" and (part.lora.targets is None or name in part.lora.targets):
            add(part.lora.rank * d_in, layers)
            add(part.lora.rank * d_out, layers)
            wrapped += 1
    add(llm.vocab_size * h, 1 + (0 if llm.tie_word_embeddings else 1) + len(part.modules_to_save))
    count = layers * (7 + 2 * wrapped + 2) + 3
    return Modules(count, tuple(tensors.items()))


def _vision_modules(ctx: Context) -> Modules:
    """Per ViT layer: qkv, proj, fc1, fc2 (gate, up, down when gated), 2 norms (+2 qk-norms); patch
    embedding and position table (modeling_intern_vit.py, transformers qwen2_5_vl)."""
    v = ctx.profile.vision
    h, f = v.hidden_size, v.intermediate_size
    mlp = [(h * f, 2), (f * h, 1)] if v.gated_mlp else [(h * f, 1), (f * h, 1)]
    per_layer = [(3 * h * h, 1), (h * h, 1), *mlp]
    tensors = [(n, k * v.num_layers) for n, k in per_layer]
    tensors += [(3 * v.temporal_patch_size * v.patch_size**2 * h, 1), (v.num_position_embeddings * h, 1)]
    count = v.num_layers * (len(per_layer) + 2 + (2 if v.qk_norm else 0)) + 2
    return Modules(count, tuple(tensors))


def _projector_modules(ctx: Context) -> Modules:
    p = ctx.profile.projector
    tensors = ((p.merged_size * p.hidden_size, 1 + p.deepstack_mergers), (p.hidden_size * p.output_size, 1 + p.deepstack_mergers))
    return Modules(3 * (1 + p.deepstack_mergers), tensors)


def _sam2_encoder_modules(ctx: Context) -> Modules:
    """Hiera block (sam2 hieradet.py MultiScaleBlock): norm1, qkv, proj, norm2, fc1, fc2, and a
    dimension projection at each stage's first block; patch embed; FPN neck convs, one per stage."""
    sam = ctx.profile.sam2
    tensors: list[tuple[int, int]] = []
    count, d_in = 2, sam.embed_dim
    for stage, blocks in enumerate(sam.stages):
        d_out = sam.stage_dims[stage]
        for _ in range(blocks):
            tensors += [(d_in * 3 * d_out, 1), (d_out * d_out, 1), (d_out * 4 * d_out, 2)]
            count += 6
            if d_in != d_out:
                tensors.append((d_in * d_out, 1))
                count += 1
            d_in = d_out
    tensors += [(d * sam.neck_dim, 1) for d in sam.stage_dims]
    merged: dict[int, int] = {}
    for numel, k in tensors:
        merged[numel] = merged.get(numel, 0) + k
    return Modules(count + 4, tuple(merged.items()))


def _sam2_decoder_modules(ctx: Context) -> Modules:
    return Modules(DECODER_MODULES, tuple((n, 1) for n in DECODER_LARGE_TENSORS))


def _seg_head_modules(ctx: Context) -> Modules:
    s = ctx.profile.seg_head
    return Modules(2, ((s.input_size * s.input_size, 1), (s.input_size * s.output_size, 1)))


MODULE_COUNTERS = {
    Component.LLM: _llm_modules,
    Component.VISION: _vision_modules,
    Component.PROJECTOR: _projector_modules,
    Component.SAM2_ENCODER: _sam2_encoder_modules,
    Component.SAM2_DECODER: _sam2_decoder_modules,
    Component.SEG_HEAD: _seg_head_modules,
}


def _passes(ctx: Context, component: Component) -> int:
    """Passes over a component's weights per step: forward, backward on the gradient path, and the
    recomputed forward of a checkpointed part."""
    if not ctx.graph.get(component, False):
        return 1
    return 2 + (1 if ctx.plan.components.get(component).checkpointing else 0)


def _trainable_tensors(ctx: Context) -> int:
    """Tensors the optimizer steps: each trained module's weight and bias (2 per module) for fully
    trained parts; LoRA: A and B per wrapped linear (+ the modules_to_save copies)."""
    total = 0
    for component, part in ctx.parts.items():
        if not part.trainable:
            continue
        plan = ctx.plan.components.get(component)
        modules = MODULE_COUNTERS[component](ctx)
        if plan.train == "lora" and component is Component.LLM:
            llm = ctx.profile.llm
            wrapped = len(llm.linear_shapes()) if plan.lora.targets is None else len(plan.lora.targets)
            total += 2 * wrapped * llm.num_layers + len(plan.modules_to_save)
        else:
            total += 2 * modules.count
    return total


def workload(profile: Profile, plan: Plan) -> Workload:
    """FLOPs per component and kernel class, module calls, and the parameter counts data movement needs."""
    ctx = build_context(profile, plan)
    flops = {c: FLOP_COUNTERS[c](ctx) for c in ctx.parts}
    kernel = dict.fromkeys(KERNEL_CLASSES, 0.0)
    for component, f in flops.items():
        kernel[KERNEL_CLASS[component]] += f.total
    eager = 0.0
    if Component.LLM in ctx.parts:
        attention = _llm_attention(ctx)
        factor = (1 if ctx.training and ctx.graph.get(Component.LLM) else 0) * 2 + 1
        factor += 1 if ctx.training and plan.components.llm.checkpointing and ctx.graph.get(Component.LLM) else 0
        kernel["gemm"] -= attention * factor
        kernel["attention"] += attention * factor
        llm = profile.llm
        s = plan.inputs.text_tokens
        eager = factor * llm.num_layers * plan.inputs.micro_batch * llm.num_heads * s * s / 2
    modules = {c: MODULE_COUNTERS[c](ctx) for c in ctx.parts}
    passes = {c: _passes(ctx, c) for c in ctx.parts}
    return Workload(
        flops=flops, micro_batch=plan.inputs.micro_batch,
        params=sum(p.total for p in ctx.parts.values()), trainable=ctx.total_trainable,
        checkpointing=any(plan.components.get(c).checkpointing for c in ctx.parts),
        training=ctx.training, compute_bytes=ctx.compute_bytes,
        forward_flops=sum(f.forward for f in flops.values()),
        backward_flops=sum(f.backward for f in flops.values()),
        recompute_flops=sum(f.recompute for f in flops.values()),
        kernel_flops=kernel, eager_score_elements=eager if plan.attention == "eager" else 0.0,
        module_calls=sum(modules[c].count * passes[c] for c in ctx.parts),
        passes=passes, modules=modules, trainable_tensors=_trainable_tensors(ctx) if ctx.training else 0,
        tokens=plan.inputs.micro_batch * plan.inputs.text_tokens if Component.LLM in ctx.parts else 0,
    )
