"""PyTorch FSDP2 (``fully_shard``): sharded states, unsharded units, reduce-scatter buffers, per rank.

Sources (torch 2.11-2.13, torch/distributed/fsdp/_fully_shard/):
- _fsdp_param.py, FSDPParam._init_sharded_param: each parameter is chunked on dim 0 into S pieces
  (S = the shard group: all GPUs, or one node's under HSDP; ``_chunk_with_empty`` = torch.chunk),
  padded to ceil(d0/S) rows per rank (``padded_sharded_param = param_data.new_zeros(chunks[0].size())``),
  kept in its original dtype (``orig_dtype``) as a DTensor; on the CPU (pinned) under CPUOffloadPolicy.
  A parameter of shape (d0, rest...) so costs every rank ceil(d0/S) x rest elements, not numel/S.
- Padding of the unsharded parameters: _fsdp_param.py, FSDPParam.init_all_gather_outputs allocates
  each parameter's all-gather output as ``torch.empty(numel * world_size)`` with numel its padded
  shard, and init_unsharded_param makes the unsharded parameter a view (as_strided) into it: a
  unit's unsharded parameters take S x ceil(d0/S) x rest elements per parameter.
  _fsdp_collectives.py, foreach_reduce: the reduce-scatter input is padded the same way
  (``_get_dim0_padded_size``), its output is the padded shard. A parameter with a small dim 0 (a
  [1, 1025, 1024] position embedding, a [128, 896] k_proj at S = 1024) costs S/d0 times its size
  unsharded. The (d0, rest) of every parameter come from memplan/profiles/fsdp_shapes.yaml
  (scripts/fsdp_shapes.py, memplan.spec.shapes); a component without an entry is counted unpadded.
  (Found on the H200 records h200-fsdp-fake-world-b, Sa2VA-1B at N = 2..1024: in-sample there.)
- _fsdp_param.py, init_dtype_attrs / _fsdp_api.py MixedPrecisionPolicy: the unsharded parameter is in
  ``param_dtype`` (None: the original dtype), gradients are reduced in ``reduce_dtype``.
- Units (memplan.probe.fsdp.shard_units, fsdp.unit_sizes here): every ViT and LLM decoder layer,
  embed_tokens, lm_head, the SAM2 image encoder; the root holds the rest.
- _fsdp_param_group.py, FSDPParamGroup.unshard / reshard: a unit (one fully_shard call) all-gathers
  all its parameters at its pre-forward and frees them at post-forward when reshard_after_forward;
  _fsdp_state.py, FSDPState._lazy_init sets the root's post_forward_mesh_info to None (the root
  stays unsharded from forward to the end of backward). Forward all-gathers run on their own stream
  and the next unit's is issued while the current one computes; in backward the next unit is
  prefetched explicitly (FSDPParamGroup._backward_prefetch): two units unsharded at a time. Which
  units are unsharded depends on the moment (loss_unsharded_bytes, backward_start_unsharded_bytes,
  reduce_scatter_neighbour_bytes; found on the H200 fake-world records, docs/methodology.md section 8).
- _fsdp_init.py, _move_states_to_device: a unit built on the CPU is moved whole to the device before
  it is sharded (init_transient_bytes).
- _fsdp_collectives.py, foreach_reduce: a unit's unsharded gradients (param_dtype) are copied into
  one reduce-scatter input of the unit's trainable size in reduce_dtype and freed, then reduced to a
  shard and cast to the sharded gradient (original dtype): foreach_reduce_peak_bytes. The root's
  reduce runs resharded, first in the final callback (reduce_scatter_neighbour_bytes; docs/stacks.md 16).
- torch/distributed/_tools/fsdp2_mem_tracker.py names the same categories (sharded/unsharded param,
  sharded/unsharded grad, all-gather, reduce-scatter, optimizer state).
"""

from __future__ import annotations

from typing import NamedTuple

from memplan.estimate.context import Context
from memplan.spec.shapes import Shape, census
from memplan.spec.units import DTYPE_BYTES
from memplan.spec.vocabulary import Component


def shard_group(ctx: Context) -> int:
    """S: ranks one parameter is sharded over: every GPU, or one node's GPUs under HSDP
    (fully_shard over a 2-D mesh (replicate, shard), _fsdp_init.py _get_managed_states)."""
    hardware = ctx.plan.hardware
    return hardware.gpus_per_node if ctx.plan.engine.fsdp.hsdp else hardware.num_gpus


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _lora_shapes(ctx: Context, component: Component) -> list[tuple[int, int]]:
    """(dim0, rest) of every LoRA matrix of a component: A is (r, d_in), B is (d_out, r) (peft
    tuners/lora/layer.py, LoraLayer.update_layer)."""
    part = ctx.plan.components.get(component)
    if not ctx.plan.trains(component) or part.train != "lora":
        return []
    r = part.lora.rank
    if component is Component.LLM and ctx.profile.llm is not None:
        llm = ctx.profile.llm
        targets = part.lora.targets
        shapes = [(d_in, d_out) for name, d_in, d_out in llm.linear_shapes() if targets is None or name in targets]
        return [shape for d_in, d_out in shapes for shape in ((r, d_in), (d_out, r))] * llm.num_layers
    if component is Component.VISION and ctx.profile.vision is not None:
        v = ctx.profile.vision
        h, f = v.hidden_size, v.intermediate_size
        shapes = [(h, 3 * h), (h, h), (h, f), (f, h)]
        return [shape for d_in, d_out in shapes for shape in ((r, d_in), (d_out, r))] * v.num_layers
    return []


# --------------------------------------------------------------------------- dim-0 padding


def padding(shapes: tuple[Shape, ...] | list[Shape], *, s: int) -> int:
    """Elements FSDP2 adds to the all-gather of parameters of shapes (d0, rest, count) over s ranks:
    sum of (s x ceil(d0/s) - d0) x rest x count (the padded shard is ceil(d0/s) x rest; every rank's
    is, so the unsharded parameter, a view into the per-parameter all-gather output, holds s of them).
    The padded shard of a group is (elements + padding) / s exactly."""
    return sum((s * _ceil_div(d0, s) - d0) * rest * count for d0, rest, count in shapes)


_SLOTS = {Component.LLM: ("llm", ("layer", "other")), Component.VISION: ("vision", ("layer", "other")),
          Component.PROJECTOR: ("projector", ("other",)), Component.SEG_HEAD: ("seg_head", ("other",)),
          Component.SAM2_ENCODER: ("sam2", ("encoder",)), Component.SAM2_DECODER: ("sam2", ("decoder",))}


def _group_padding(ctx: Context, component: Component, group: str) -> int:
    """Padding of one census group of a component (0 without a census entry for its spec)."""
    slot = _SLOTS[component][0]
    groups = census(ctx.profile, slot)
    return padding(groups.get(group, ()), s=shard_group(ctx)) if groups else 0


def _full(ctx: Context, component: Component) -> bool:
    """The component's own weights are trained (train: full); else they are frozen."""
    return ctx.plan.trains(component) and ctx.plan.components.get(component).train == "full"


def _lora_padding(ctx: Context, component: Component) -> int:
    return padding([(d0, rest, 1) for d0, rest in _lora_shapes(ctx, component)], s=shard_group(ctx))


def _embedding_padding(ctx: Context) -> int:
    """Padding of one (vocab, hidden) embedding matrix: embed_tokens, lm_head or a peft copy."""
    llm = ctx.profile.llm
    return padding([(llm.vocab_size, llm.hidden_size, 1)], s=shard_group(ctx)) if llm else 0


def _copies(ctx: Context) -> int:
    """peft modules_to_save copies of embed_tokens/lm_head (trainable; one per name, tied or not, as
    _embedding_units counts them)."""
    if not ctx.plan.trains(Component.LLM) or ctx.profile.llm is None:
        return 0
    return len(set(ctx.plan.components.llm.modules_to_save).intersection(("embed_tokens", "lm_head")))


def component_padding(ctx: Context, component: Component) -> tuple[int, int]:
    """(frozen, trainable) padding elements of a component's parameters over the shard group: its
    census groups (layers x num_layers), embeddings (LLM), then its LoRA matrices and copies."""
    if component not in ctx.parts or component not in _SLOTS:
        return 0, 0
    groups = _SLOTS[component][1]
    spec = ctx.profile.llm if component is Component.LLM else ctx.profile.vision
    base = sum(_group_padding(ctx, component, g) * (spec.num_layers if g == "layer" else 1) for g in groups)
    adapters = _lora_padding(ctx, component)
    if component is Component.LLM:
        tied = ctx.profile.llm.tie_word_embeddings
        base += _embedding_padding(ctx) * (1 if tied else 2)
        adapters += _embedding_padding(ctx) * _copies(ctx)
    return (0, base + adapters) if _full(ctx, component) else (base, adapters)


def sharded_trainable(ctx: Context, component: Component) -> int:
    """Trainable elements this rank holds: ceil(d0/S) x rest per parameter, (P_t + padding)/S (the
    padding matters once S exceeds a dim 0: every rank holds a whole row of each LoRA A (r, d_in))."""
    part = ctx.parts[component]
    if not ctx.training or not part.trainable:
        return 0
    return _ceil_div(part.trainable + component_padding(ctx, component)[1], shard_group(ctx))


def sharded_trainable_bytes(ctx: Context, component: Component) -> int:
    """This rank's trainable shard in bytes: its elements at the component's held width (adapters and
    copies may differ in dtype: PartCounts.trainable_held_bytes), ceil."""
    part = ctx.parts[component]
    if not part.trainable:
        return 0
    return _ceil_div(sharded_trainable(ctx, component) * part.trainable_held_bytes, part.trainable)


def sharded_frozen(ctx: Context, component: Component) -> int:
    """Frozen elements this rank holds: (P_f + padding)/S (ceil(d0/S) x rest per parameter)."""
    return _ceil_div(ctx.parts[component].frozen + component_padding(ctx, component)[0], shard_group(ctx))


def param_bytes(ctx: Context, original: int) -> int:
    """Bytes per element of an unsharded parameter: MixedPrecisionPolicy.param_dtype, else the original."""
    dtype = ctx.plan.engine.fsdp.param_dtype
    if dtype is None:
        return original
    return ctx.compute_bytes if dtype == "compute" else DTYPE_BYTES[dtype]


def reduce_bytes(ctx: Context, original: int) -> int:
    """Bytes per element of the reduce-scatter: reduce_dtype, else the unsharded gradient's (param) dtype."""
    dtype = ctx.plan.engine.fsdp.reduce_dtype
    if dtype is None:
        return param_bytes(ctx, original)
    return ctx.compute_bytes if dtype == "compute" else DTYPE_BYTES[dtype]


def offloaded(ctx: Context) -> bool:
    return ctx.plan.engine.fsdp.offload


# --------------------------------------------------------------------------- sharded states (device)


def sharded_weight_bytes(ctx: Context, component: Component, *, trainable: bool) -> int:
    """Sharded parameters on the device: elements per rank x original bytes; 0 under CPUOffloadPolicy."""
    if offloaded(ctx):
        return 0
    part = ctx.parts[component]
    if trainable:
        return sharded_trainable_bytes(ctx, component)
    return sharded_frozen(ctx, component) * part.weight_bytes


def sharded_gradient_bytes(ctx: Context, component: Component) -> int:
    """Sharded gradients (the DTensor .grad of each sharded parameter) in the original dtype."""
    if offloaded(ctx):
        return 0
    return sharded_trainable_bytes(ctx, component)


def optimizer_state_bytes(ctx: Context, component: Component, per_param: int) -> int:
    """torch.optim state on the sharded parameters (zeros_like(param): original dtype x moments)."""
    if offloaded(ctx):
        return 0
    return sharded_trainable(ctx, component) * per_param


# --------------------------------------------------------------------------- units and buffers


class Unit(NamedTuple):
    """One fully_shard unit: (frozen, trainable) elements and the padding FSDP2 adds to each in its
    all-gather (the unsharded unit is elements + padding; its shard is that over S)."""

    frozen: int
    trainable: int
    frozen_padding: int = 0
    trainable_padding: int = 0


def _frozen_only(unit: Unit) -> Unit:
    """The unit without a trainable side (inference: nothing is trained)."""
    return Unit(unit.frozen + unit.trainable, 0, unit.frozen_padding + unit.trainable_padding, 0)


def _layer_units(ctx: Context, component: Component) -> list[Unit]:
    """Each decoder/ViT layer unit: attention + MLP + its norms + its LoRA, with their padding."""
    spec = ctx.profile.llm if component is Component.LLM else ctx.profile.vision
    if spec is None or component not in ctx.parts:
        return []
    layer = spec.layer_params + spec.param_groups()["norms"] // spec.num_layers
    lora = sum(d0 * rest for d0, rest in _lora_shapes(ctx, component)) // spec.num_layers
    base_pad = _group_padding(ctx, component, "layer")
    lora_pad = _lora_padding(ctx, component) // spec.num_layers
    if _full(ctx, component):
        return [Unit(0, layer, 0, base_pad + lora_pad)] * spec.num_layers
    return [Unit(layer, lora, base_pad, lora_pad)] * spec.num_layers


def _embedding_units(ctx: Context) -> list[Unit]:
    """embed_tokens and lm_head (each with its peft modules_to_save copy) as units; one unit when tied."""
    llm = ctx.profile.llm
    if llm is None or Component.LLM not in ctx.parts:
        return []
    part = ctx.plan.components.llm
    full = _full(ctx, Component.LLM)
    copies = set(part.modules_to_save) if ctx.plan.trains(Component.LLM) else set()
    v_h, pad = llm.embedding_params, _embedding_padding(ctx)

    def unit(names: tuple[str, ...]) -> Unit:
        if full:
            return Unit(0, v_h, 0, pad)
        n = len(copies.intersection(names))
        return Unit(v_h, v_h * n, pad, pad * n)

    if llm.tie_word_embeddings:
        return [unit(("embed_tokens", "lm_head"))]
    return [unit(("embed_tokens",)), unit(("lm_head",))]


def _sam2_unit(ctx: Context) -> list[Unit]:
    """The SAM2 image encoder as one unit (none without SAM2)."""
    if Component.SAM2_ENCODER not in ctx.parts:
        return []
    part = ctx.parts[Component.SAM2_ENCODER]
    frozen_pad, trainable_pad = component_padding(ctx, Component.SAM2_ENCODER)
    return [Unit(part.frozen, part.trainable, frozen_pad, trainable_pad)]


def _root(ctx: Context, units: list[Unit]) -> Unit:
    """The root: every parameter no unit holds, and the padding of those (all components' minus the units')."""
    pads = [component_padding(ctx, c) for c in ctx.parts]
    frozen = sum(p.frozen for p in ctx.parts.values()) - sum(u.frozen for u in units)
    trainable = sum(p.trainable for p in ctx.parts.values()) - sum(u.trainable for u in units)
    frozen_pad = sum(p[0] for p in pads) - sum(u.frozen_padding for u in units)
    trainable_pad = sum(p[1] for p in pads) - sum(u.trainable_padding for u in units)
    return Unit(max(frozen, 0), max(trainable, 0), max(frozen_pad, 0), max(trainable_pad, 0))


def unit_sizes(ctx: Context) -> tuple[list[Unit], Unit]:
    """Every non-root unit in forward order, and the root (elements and their all-gather padding).

    Units, as memplan.probe.fsdp applies fully_shard (and torchtitan does for its LLMs): each ViT
    layer; embed_tokens; each LLM decoder layer; lm_head (tied: one unit with embed_tokens); the
    SAM2 image encoder. The root holds the rest (final norm, projector, seg head, SAM2 prompt encoder
    and mask decoder, vision embeddings)."""
    vision, llm = _layer_units(ctx, Component.VISION), _layer_units(ctx, Component.LLM)
    embeddings = _embedding_units(ctx) if ctx.plan.engine.fsdp.embeddings_unit else []
    units = [*vision, *embeddings[:1], *llm, *embeddings[1:], *_sam2_unit(ctx)]
    if not ctx.training:
        units = [_frozen_only(u) for u in units]
    root = _root(ctx, units)
    return units, root if ctx.training else _frozen_only(root)


def _widths(ctx: Context) -> tuple[int, int]:
    """(frozen, trainable) bytes per element of the unsharded parameters."""
    frozen = ctx.parts[Component.LLM].weight_bytes if Component.LLM in ctx.parts else ctx.compute_bytes
    trainable = ctx.parts[Component.LLM].trainable_bytes if Component.LLM in ctx.parts else ctx.compute_bytes
    return param_bytes(ctx, frozen), param_bytes(ctx, trainable)


def _unsharded(ctx: Context, unit: Unit) -> int:
    """A unit's unsharded parameters: its per-parameter all-gather outputs, padded (S x ceil(d0/S) x rest)."""
    frozen_width, trainable_width = _widths(ctx)
    return (unit.frozen + unit.frozen_padding) * frozen_width + (unit.trainable + unit.trainable_padding) * trainable_width


def root_unsharded_bytes(ctx: Context) -> int:
    """The root unit's unsharded parameters, alive from the first forward to the end of backward."""
    return _unsharded(ctx, unit_sizes(ctx)[1])


def units_unsharded_bytes(ctx: Context, *, after_forward: bool = False) -> int:
    """Unsharded parameters of the non-root units at one moment: the largest pair of neighbours in
    execution order (the current unit and the prefetched next one); all of them after forward when
    reshard_after_forward is off."""
    units, _ = unit_sizes(ctx)
    sizes = [_unsharded(ctx, u) for u in units]
    if after_forward and not ctx.plan.engine.fsdp.reshard_after_forward:
        return sum(sizes)
    return max([a + b for a, b in zip(sizes, sizes[1:])] + sizes[:1] or [0])


def foreach_reduce_peak_bytes(*, unsharded_grad_bytes: int, input_bytes: int, output_bytes: int,
                              cast_bytes: int) -> int:
    """Most bytes one FSDP2 ``foreach_reduce`` holds at once: max(U + I, I + O + C).

    U: the unit's unsharded gradients (param dtype); I: the reduce-scatter input (reduce dtype, padded,
    S x ceil(d0/S) x rest per gradient); O: the reduce-scatter output (I / S, reduce dtype); C: the
    output cast to the original dtype, the new sharded gradient (0 when reduce dtype = original dtype:
    the sharded gradients are then views of O).

    Source: torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py, foreach_reduce (torch 2.11 and
    2.13 alike): ``reduce_scatter_input`` is allocated and filled (``foreach_reduce_scatter_copy_in``),
    then ``unsharded_grads.clear()`` ("Only after the copy-in finishes can we free the gradients")
    frees U before ``reduce_output`` is allocated on the reduce-scatter stream (on one rank it is a
    ``copy_`` of the input, no collective); ``_to_dtype_if_needed(reduce_output, orig_dtype)`` then
    allocates C while O and I still exist (I is returned and kept for the next reduce's wait), and the
    rebinding frees O. So U never meets O or C. Found on the accelerate FSDP2 run at world size 1
    (reports/probes/logs/h200-fsdp-accelerate-c.json, where O = I and C = 2 I): docs/stacks.md 16."""
    return max(unsharded_grad_bytes + input_bytes, input_bytes + output_bytes + cast_bytes)


def _largest_reduce(ctx: Context) -> tuple[Unit, bool]:
    """The unit with the most trainable elements (its foreach_reduce is the backward's largest) and
    whether it is the root."""
    units, root = unit_sizes(ctx)
    largest = max([*units, root], key=lambda u: u.trainable)
    return largest, largest is root


def root_reduces_largest(ctx: Context) -> bool:
    """The root's reduce-scatter is the largest (embeddings in the root: accelerate's
    TRANSFORMER_BASED_WRAP on the probe model, memplan.integrations.accelerate_fsdp). It runs in the
    root's post-backward final callback, after the autograd graph has run (_fsdp_state.py,
    _root_post_backward_final_callback, queued on Variable._execution_engine)."""
    if not ctx.training:
        return False
    largest, is_root = _largest_reduce(ctx)
    return is_root and largest.trainable > 0


def reduce_scatter_bytes(ctx: Context) -> int:
    """Backward of the unit with the most trainable elements: what its foreach_reduce holds at its
    peak (foreach_reduce_peak_bytes) beyond its own new sharded gradient, which the moment counts among
    the gradients (C, or O when the reduce dtype is the original one)."""
    if not ctx.training:
        return 0
    largest, _ = _largest_reduce(ctx)
    padded = largest.trainable + largest.trainable_padding
    original = ctx.parts[Component.LLM].trainable_bytes if Component.LLM in ctx.parts else ctx.compute_bytes
    rs = reduce_bytes(ctx, original)
    shard = _ceil_div(padded, shard_group(ctx))
    own = shard * original
    peak = foreach_reduce_peak_bytes(unsharded_grad_bytes=largest.trainable * param_bytes(ctx, original),
                                     input_bytes=padded * rs, output_bytes=shard * rs,
                                     cast_bytes=own if rs != original else 0)
    return max(peak - own, 0)


# --------------------------------------------------------------------------- host (CPUOffloadPolicy)


def host_bytes_per_rank(ctx: Context, state_per_param: int) -> int:
    """Pinned sharded parameters and gradients (CPUOffloadPolicy(pin_memory=True)) plus the optimizer
    state on the host, per rank."""
    if not offloaded(ctx):
        return 0
    total = 0
    for component, part in ctx.parts.items():
        total += sharded_frozen(ctx, component) * part.weight_bytes
        total += 2 * sharded_trainable_bytes(ctx, component) + sharded_trainable(ctx, component) * state_per_param
    return total


def pinned_bytes_per_rank(ctx: Context) -> int:
    """The pinned share of host_bytes_per_rank: sharded parameters and gradients (_fsdp_param.py
    pins them when offload_policy.pin_memory, the default)."""
    if not offloaded(ctx):
        return 0
    return sum(sharded_frozen(ctx, c) * p.weight_bytes + 2 * sharded_trainable_bytes(ctx, c)
               for c, p in ctx.parts.items())


# --------------------------------------------------------------------------- moments (phases.py)


def _held(ctx: Context, unit: Unit, *, padded: bool = False) -> int:
    """A unit's parameters in their held (original) dtypes, before any MixedPrecisionPolicy cast;
    with their dim-0 padding when ``padded`` (S times the unit's padded shard)."""
    if Component.LLM in ctx.parts:
        part = ctx.parts[Component.LLM]
        frozen = part.weight_bytes
        trainable = part.trainable_held_bytes / part.trainable if part.trainable else part.trainable_bytes
    else:
        frozen = trainable = ctx.compute_bytes
    frozen_n = unit.frozen + (unit.frozen_padding if padded else 0)
    trainable_n = unit.trainable + (unit.trainable_padding if padded else 0)
    return int(frozen_n * frozen + -(-trainable_n * trainable // 1))


def init_transient_bytes(ctx: Context) -> int:
    """The build-then-shard transient of init: the probe builds the model on the CPU
    (memplan.probe.engines, cpu_build) and each fully_shard call first moves its whole unit to the
    device in the held dtype (_fsdp_init.py ``_move_states_to_device``), then chunks every parameter
    into its padded shard (_fsdp_param.py ``_init_sharded_param``); the whole unit is freed only once
    its shards exist. Units are sharded in memplan.probe.fsdp's order (the units, then the root), so
    at unit i the device holds the shards of units 0..i-1, unit i whole and its shard. Returned: the
    largest such moment minus the final sharded states (which init_phase counts), never negative.
    Under CPUOffloadPolicy the shards go to the host (``padded_sharded_param.cpu()``): unit i whole
    and its shard only."""
    units, root = unit_sizes(ctx)
    s = shard_group(ctx)
    wholes = [_held(ctx, u) for u in [*units, root]]
    shards = [_ceil_div(_held(ctx, u, padded=True), s) for u in [*units, root]]
    if offloaded(ctx):
        return max([w + sh for w, sh in zip(wholes, shards)] or [0])
    later = 0
    best = 0
    for whole, shard in zip(reversed(wholes), reversed(shards)):
        # on the device at this unit: all shards except those of the later units, plus the whole unit
        best = max(best, whole - later)
        later += shard
    return best


def post_forward_order(ctx: Context) -> list[Unit]:
    """(frozen, trainable) of the non-root units in the order their post-forward runs (the order
    FSDP2 records in ``comm_ctx.post_forward_order``, _fsdp_param_group.py ``_record_post_forward``).
    A tied embed_tokens/lm_head unit is one fully_shard call over two modules: its post-forward (the
    reshard) runs when the last of them, lm_head, has run (_fsdp_state.py
    ``_register_group_forward_hooks``), so it comes after the decoder layers."""
    vision, llm = _layer_units(ctx, Component.VISION), _layer_units(ctx, Component.LLM)
    embeddings = _embedding_units(ctx) if ctx.plan.engine.fsdp.embeddings_unit else []
    tied = len(embeddings) == 1
    order = [*vision, *llm, *embeddings] if tied else [*vision, *embeddings[:1], *llm, *embeddings[1:]]
    order += _sam2_unit(ctx)
    return order if ctx.training else [_frozen_only(u) for u in order]


def loss_unsharded_bytes(ctx: Context) -> int:
    """Non-root units unsharded at the LLM loss in forward: none when reshard_after_forward (the unit
    holding lm_head was resharded by its post-forward before the loss is computed, and every earlier
    unit by its own); all of them when it is off."""
    if not ctx.plan.engine.fsdp.reshard_after_forward:
        return units_unsharded_bytes(ctx, after_forward=True)
    return 0


def backward_start_unsharded_bytes(ctx: Context) -> int:
    """Non-root units unsharded when backward starts (the LLM loss backward): the root's pre-backward
    hook fires on the first gradient of its output and prefetches the unit whose post-forward ran
    last (_fsdp_state.py ``_pre_backward`` -> _fsdp_param_group.py ``pre_backward`` ->
    ``_backward_prefetch``: ``post_forward_order[curr_index - 1]``, the root being last), so that
    unit (lm_head's, or the SAM2 encoder's) is all-gathered before the loss's own backward runs. No
    reduce-scatter has run yet. All units when reshard_after_forward is off."""
    if not ctx.plan.engine.fsdp.reshard_after_forward:
        return units_unsharded_bytes(ctx, after_forward=True)
    order = post_forward_order(ctx)
    if not order or not sum(unit_sizes(ctx)[1][:2]):
        return 0  # a root without parameters has no param group, so its pre-backward prefetches nothing
    return _unsharded(ctx, order[-1])


def reduce_scatter_root_bytes(ctx: Context) -> int:
    """The root's unsharded parameters at the largest reduce-scatter: none when that reduce is the
    root's own (_fsdp_param_group.py ``post_backward`` calls ``reshard()`` before ``foreach_reduce``),
    else root_unsharded_bytes (the root stays unsharded to the end of backward)."""
    return 0 if root_reduces_largest(ctx) else root_unsharded_bytes(ctx)


def reduce_scatter_neighbour_bytes(ctx: Context) -> int:
    """Unsharded parameters beside the reduce-scatter of the unit with most trainable elements: its
    own are resharded first (_fsdp_param_group.py ``post_backward``: ``reshard()`` before
    ``foreach_reduce``), the unit before it in post-forward order was prefetched at its
    pre-backward (``_backward_prefetch``). All units when reshard_after_forward is off.

    When the root's reduce is the largest (root_reduces_largest) it runs first in the final callback
    (``all_states`` lists the root first: FSDPState._lazy_init walks ``root_module.named_modules()``),
    before the callback's ``post_backward`` of the units that never ran a backward of their own: the
    one the first trained unit prefetched (the unit before it in post-forward order) and, when it
    has no graph (SAM2's frozen image encoder, run under ``torch.no_grad``, memplan.probe.build),
    the one the root prefetched at backward start (backward_start_unsharded_bytes)."""
    if not ctx.plan.engine.fsdp.reshard_after_forward:
        return units_unsharded_bytes(ctx, after_forward=True)
    order = post_forward_order(ctx)
    if not order:
        return 0
    index = max(range(len(order)), key=lambda i: order[i][1])
    neighbour = _unsharded(ctx, order[index - 1]) if index > 0 else 0
    if not root_reduces_largest(ctx):
        return neighbour
    no_graph_target = (Component.SAM2_ENCODER in ctx.parts and not ctx.plan.trains(Component.SAM2_ENCODER)
                       and order[-1] == _sam2_unit(ctx)[0])
    return neighbour + (backward_start_unsharded_bytes(ctx) if no_graph_target else 0)
