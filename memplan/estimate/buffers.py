"""Engine buffers and the optimizer step's temporaries.

DeepSpeed ZeRO-1/2 (deepspeed/runtime/zero/stage_1_and_2.py): with contiguous_gradients each rank
allocates an ipg buffer of reduce_bucket_size elements in the compute dtype at the first backward,
two when overlap_comm; at the step the rank's gradient partition is flattened into a new 16-bit
tensor and that is converted to fp32 (2 + 4 bytes x P_t/N, step_transient_bytes); at initialize
an fp32 zero gradient of the partition is made beside the masters (init_states_grad_bytes).
ZeRO-3 (stage3.py, partitioned_param_coordinator.py): parameters are all-gathered module by module;
the fetched working set is the largest module plus the prefetch bucket, capped by
stage3_max_live_parameters; gradients are reduced through a reduce_bucket_size buffer.
DDP (plain PyTorch on several GPUs) keeps its gradient buckets beside param.grad (P_t x grad bytes;
torch.nn.parallel.DistributedDataParallel, gradient_as_bucket_view=False).
"""

from __future__ import annotations

from memplan.estimate import fsdp, optimizer, weights
from memplan.estimate.context import Context
from memplan.spec.vocabulary import Component


def ipg_bucket_bytes(ctx: Context) -> int:
    """reduce_bucket_size x compute bytes, x2 with overlap_comm (ZeRO-1/2 with gradient hooks), whatever
    the model's size: measured 2.0 GiB at the first backward of a 3M-parameter model on an H100
    (5e8 elements x 2 bytes x 2 buffers), reports/probes/h100-probe-dev.jsonl."""
    if not (ctx.training and ctx.is_deepspeed and ctx.total_trainable):
        return 0
    engine = ctx.plan.engine
    if ctx.zero_stage in (1, 2):
        if not (ctx.zero_stage == 2 or engine.overlap) or not engine.contiguous_gradients:
            return 0
        buffers = 2 if engine.overlap else 1
        return buffers * engine.reduce_bucket_size * ctx.compute_bytes
    if ctx.zero_stage == 3:
        return engine.reduce_bucket_size * ctx.compute_bytes
    return 0


def largest_module_params(ctx: Context) -> int:
    """Largest set of parameters one forward call gathers: the (trainable copy of the) embedding
    or lm_head, or one decoder layer, or one ViT layer."""
    candidates = [0]
    if ctx.profile.llm is not None:
        llm = ctx.profile.llm
        candidates.append(llm.embedding_params)
        candidates.append(llm.layer_params)
    if ctx.profile.vision is not None:
        candidates.append(ctx.profile.vision.layer_params)
    return max(candidates)


def zero3_gathers_in_place(ctx: Context) -> bool:
    """ZeRO-3 on a partition group of one rank gathers nothing: when every parameter's partition world
    size is 1, all_gather_coalesced returns a NoGatherCoalescedHandle that points param.data at the
    partition itself (param.ds_tensor.data.to(device), no copy on the same device;
    deepspeed/runtime/zero/partition_parameters.py, all_gather_coalesced and NoGatherCoalescedHandle),
    so the forward's "gathered" parameters cost no memory beside the partitions.

    The condition is the world size, whatever the stack (docs/stacks.md, 9): found on Trainer's
    1-GPU ZeRO-3 forwards (reports/probes/h200-stacks-b.jsonl); the sa2va harness's records agree
    per step: on 2 GPUs and on the fake 16-rank world the second step's forward holds 1.8-1.9 GiB
    more than the first beyond the optimizer state (the coordinator's trace is recorded in step 1,
    which releases every module's parameters after use, and replayed from step 2, which keeps those
    reused within stage3_max_reuse_distance), while on one GPU (h100-batch1 1d17a168) the two steps
    differ by the optimizer state alone. The ~1.2 GiB that the harness's non-checkpointed ZeRO-3
    forwards held beyond the estimate, at N = 1 and 2 alike, is ZeRO-3's linear saving the inputs of
    frozen linears (activations.zero3_linear_input_bytes_per_token, docs/stacks.md, 13).

    Not with parameter offload: the partition is then in host memory and the same ``.to(device)`` is a
    copy onto the GPU (one_rank_gather_copy_bytes; docs/stacks.md, 15)."""
    return (ctx.is_deepspeed and ctx.zero_stage == 3 and ctx.num_gpus == 1
            and ctx.plan.engine.offload_params == "none")


def one_rank_gather_copy_bytes(*, gathered_params: int, param_bytes: int, held_bytes: int) -> int:
    """GPU bytes that ZeRO-3's gathered parameters cost on a partition group of one rank whose partitions
    are offloaded (offload_param cpu/nvme; with them on the GPU the gather is in place and costs nothing:
    zero3_gathers_in_place, which keeps that case from here).

        min(gathered_params x param_bytes, held_bytes)

    Source (DeepSpeed 0.19.8, deepspeed/runtime/zero/partition_parameters.py): with partition world
    size 1, ``Init.all_gather_coalesced`` returns ``_no_gather_coalesced(params)``, whose
    ``NoGatherHandle`` / ``NoGatherCoalescedHandle`` set ``param.data =
    param.ds_tensor.data.to(device=current_device, non_blocking=True).view(param.ds_shape)``. Where the
    partition ``ds_tensor`` lives is ``Init._partition_param``'s choice: ``device = self.remote_device``
    (``Init.__init__``: the local GPU unless ``zero_optimization.offload_param.device`` is cpu or nvme;
    parameter_offload.py ``DeepSpeedZeRoOffload._convert_to_zero_parameters`` passes the same
    ``remote_device``), pinned host memory under offload. On the GPU the ``.to`` is the partition
    itself (no bytes); in host memory it allocates a full GPU copy of every gathered parameter, in the
    partition's dtype, freed by ``free_param`` when the coordinator releases it
    (partitioned_param_coordinator.py ``__release_param``). How many stay gathered is the
    coordinator's business, as on N > 1 (``gathered_params``: zero3_gathered_bytes's working set, up to
    stage3_max_live_parameters once the trace is complete, docs/stacks.md 9 and 14); the copies cannot
    exceed the parameters the host holds (``held_bytes``)."""
    return min(gathered_params * param_bytes, held_bytes)


def zero3_persistent_gradients(ctx: Context) -> bool:
    """ZeRO-3 without optimizer offload keeps its gradient partitions in one flat buffer allocated at
    initialize and never freed: _setup_for_real_optimizer makes grad_partitions_flat_buffer =
    torch.zeros(sum of partition_numel, gradient_accumulation_dtype, self.device), self.device the GPU
    unless the optimizer is offloaded (deepspeed/runtime/zero/stage3.py). So this rank's gradient
    partition (P_t/N in the compute dtype) is resident from init through every forward.

    Found on Trainer's ZeRO-3 full fine-tune (h200-stacks-b.jsonl: init and forward 2.9 GiB above the
    estimate before it). Applied to every stack since the z3-backward branch: the sa2va harness has the
    buffer too (its census counts it), and what had kept it from the harness, its multi-GPU backward
    0.5-0.7 GiB over, was the backward holding the forward's whole gathered set
    (zero3_backward_gathered_bytes; docs/stacks.md, 10 and 14)."""
    return ctx.is_deepspeed and ctx.zero_stage == 3 and ctx.training and ctx.plan.engine.offload_optimizer == "none"


def zero3_gathered_bytes(ctx: Context) -> int:
    """ZeRO-3 working set of all-gathered parameters, in the compute dtype.

    A gathered parameter is released after use only if it will not be reused within
    stage3_max_reuse_distance parameters (default 1e9); in a forward whose parameters the backward
    reuses, that keeps up to stage3_max_live_parameters (default 1e9) gathered
    (deepspeed/runtime/zero/partitioned_param_coordinator.py). Working set = min(max live, all
    parameters the step touches, largest module + prefetch bucket when reuse is off)."""
    if not (ctx.is_deepspeed and ctx.zero_stage == 3) or zero3_gathers_in_place(ctx):
        return 0
    engine = ctx.plan.engine
    total = sum(p.total + p.trainable for p in ctx.parts.values())
    if engine.stage3_max_reuse_distance >= largest_module_params(ctx):
        live = min(engine.stage3_max_live_parameters, total)
    else:
        live = min(engine.stage3_max_live_parameters, largest_module_params(ctx) + engine.stage3_prefetch_bucket_size)
    if ctx.num_gpus == 1:  # one rank with parameter offload: each gather is a host-to-GPU copy
        return one_rank_gather_copy_bytes(gathered_params=live, param_bytes=ctx.compute_bytes,
                                          held_bytes=weights.held_weight_bytes(ctx))
    return live * ctx.compute_bytes


def _zero3_unused_originals(ctx: Context, component: Component) -> int:
    """Parameters of a component that no forward or backward gathers: the originals behind peft's
    modules_to_save copies (ModulesToSaveWrapper.forward calls only the active copy, so the wrapped
    original is never fetched). A tied embedding is one tensor: unused only when both of its modules
    are wrapped."""
    llm = ctx.profile.llm
    part = ctx.plan.components.get(component)
    if component is not Component.LLM or llm is None or part.train != "lora" or not part.modules_to_save:
        return 0
    if ctx.plan.stack is not None and ctx.plan.stack.embeddings_training == "in_place":
        return 0
    wrapped = {"embed_tokens", "lm_head"} & set(part.modules_to_save)
    if llm.tie_word_embeddings:
        return llm.embedding_params if len(wrapped) == 2 else 0
    return len(wrapped) * llm.embedding_params


def zero3_backward_gathered_bytes(ctx: Context) -> int:
    """ZeRO-3's gathered parameters from the end of forward through backward: those the backward
    gathers again, at most the forward's working set (zero3_gathered_bytes).

    Once the coordinator replays its trace (steps >= 2; partitioned_param_coordinator.py), a module's
    parameters are released after its forward only if __params_to_release finds no later use: not
    within stage3_max_reuse_distance of the trace, and not one the prefetcher has already scanned past
    (``__most_recent_step_id_param_fetched_for[param] > step_id``: "Don't release params whose reuse
    was skipped by prefetch"). The prefetcher pops every queue entry whose parameter is AVAILABLE for
    free (only NOT_AVAILABLE ones count against stage3_prefetch_bucket_size and
    stage3_max_live_parameters), so in the forward it runs through the backward's entries too, and every
    parameter that the backward uses again stays gathered from its forward until its backward
    release. What the forward gathered and the backward does not use is released after its forward:
    a frozen tower without a graph (the vision tower, SAM2's image encoder under no_grad, which the
    sa2va harness runs after the LLM, so it is gathered at the forward's LLM loss but not at the
    loss backward), and the originals behind peft's modules_to_save copies, never fetched.

    So from the end of forward: min(forward working set, parameters of the components with a graph
    less those originals) in the compute dtype. Traced on the CPU with DeepSpeed 0.19.8's own
    coordinator (sa2va-1b, fake 16-rank world, ZeRO-3, step 2): 1.71 GiB gathered at the forward's
    lm_head, 1.31 GiB at its backward (0.39 GiB released with SAM2's image encoder); the components
    with a graph here hold 1.32 GiB (docs/stacks.md, 14)."""
    forward = zero3_gathered_bytes(ctx)
    if not forward or not ctx.training:
        return forward
    used = sum(p.frozen + p.trainable - _zero3_unused_originals(ctx, c)
               for c, p in ctx.parts.items() if ctx.graph.get(c, False))
    return min(forward, used * ctx.compute_bytes)


def hpz_secondary_bytes(ctx: Context) -> int:
    """ZeRO++ hpZ (zero_hpz_partition_size = H > 1): after its first use every parameter keeps a
    secondary partition over H ranks (one node) in its dtype, beside the primary 1/N one, for the
    backward all-gather inside the node (deepspeed/runtime/zero/partition_parameters.py,
    _partition_param_sec: ds_secondary_tensor of aligned numel // H); invalidated after each step."""
    hpz = ctx.plan.engine.zero_hpz_partition_size
    if not (ctx.is_deepspeed and ctx.zero_stage == 3 and hpz > 1):
        return 0
    total = sum(p.frozen * p.weight_bytes + p.trainable * p.trainable_bytes for p in ctx.parts.values())
    return -(-total // hpz)


def output_grad_first(ctx: Context) -> bool:
    """Whether a trained parameter gets its gradient during the loss backward, before any decoder
    layer's: a trained lm_head (a modules_to_save copy, in-place training, a fully trained LLM).
    DeepSpeed ZeRO-1/2 allocates its ipg bucket at the first gradient hook
    (stage_1_and_2.py, reduce_independent_p_g_buckets_and_remove_grads), so only then does the bucket
    coincide with the loss backward's spike; with LoRA alone the first gradients come from the last
    layer, after the spike is freed."""
    llm = ctx.plan.components.llm
    if ctx.profile.llm is None or not ctx.plan.trains(Component.LLM):
        return False
    if "lm_head" in llm.modules_to_save:
        return True  # peft's copy is a tensor of its own, even of a tied head
    return llm.train == "full" and not tied_output_waits(ctx)


def tied_output_waits(ctx: Context) -> bool:
    """A trained output layer tied to the input embeddings (one tensor: a fully trained LLM with
    tie_word_embeddings, or the tied weight trained in place) gets its gradient hook only at the end
    of backward: autograd runs a leaf's AccumulateGrad once every use's gradient has arrived
    (torch/csrc/autograd/engine.cpp, dependencies counted per node), and the embedding lookup, its
    first use, is the last to be differentiated; DeepSpeed's hook sits on that AccumulateGrad
    (stage_1_and_2.py, create_reduce_and_remove_grad_hooks). So no bucket at the loss backward."""
    llm = ctx.plan.components.llm
    if ctx.profile.llm is None or not ctx.profile.llm.tie_word_embeddings or "lm_head" in llm.modules_to_save:
        return False
    in_place = ctx.plan.stack.embeddings_training == "in_place" and "embed_tokens" in llm.modules_to_save
    return llm.train == "full" or in_place


def ddp_bucket_bytes(ctx: Context) -> int:
    if ctx.is_deepspeed or ctx.is_fsdp or ctx.num_gpus == 1 or not ctx.training:
        return 0
    return sum(p.trainable_held_bytes for p in ctx.parts.values())


def step_transient_bytes(ctx: Context) -> int:
    """Temporaries of one optimizer step on the GPU.

    DeepSpeed ZeRO-1/2/3 without offload: the fp32 copy of this rank's gradient partition (4 P_t/N),
    and, ZeRO-1/2 in 16 bit, the flat 16-bit copy it is made from (zero12_step_flat_grad_bytes).
    torch.optim.AdamW with foreach: one temporary per parameter group (exp_avg_sq.sqrt()), the size
    of the state (torch/optim/adamw.py _multi_tensor_adamw); the fused kernel (Trainer's default
    adamw_torch_fused, torch/optim/adamw.py _fused_adamw) updates in place. Offload: the step runs on the host.
    """
    if not ctx.training or not ctx.total_trainable:
        return 0
    if ctx.is_deepspeed:
        if ctx.plan.engine.offload_optimizer != "none" or ctx.zero_stage == 0:
            return 0
        return ctx.shard(4 * ctx.total_trainable, at_stage=1) + zero12_step_flat_grad_bytes(ctx)
    if ctx.plan.optimizer.kind in ("adamw",) and ctx.plan.optimizer.foreach and not ctx.stack.fused_optimizer:
        if ctx.is_fsdp:  # on the sharded parameters; on the host under CPUOffloadPolicy
            return 0 if fsdp.offloaded(ctx) else sum(fsdp.sharded_trainable_bytes(ctx, c) for c in ctx.parts)
        return sum(p.trainable_held_bytes for p in ctx.parts.values())
    return 0


def _zero12_on_gpu(ctx: Context) -> bool:
    """DeepSpeed ZeRO-1/2 (stage_1_and_2.py's DeepSpeedZeroOptimizer) training something, optimizer
    not offloaded (with cpu_offload its fp32 partitions and their gradients live on the host)."""
    return (ctx.is_deepspeed and ctx.zero_stage in (1, 2) and ctx.training and bool(ctx.total_trainable)
            and ctx.plan.engine.offload_optimizer == "none")


def zero12_step_flat_grad_bytes(ctx: Context) -> int:
    """ZeRO-1/2's step flattens this rank's gradient partition into a new tensor before the fp32 cast:
    DeepSpeedZeroOptimizer.step (deepspeed/runtime/zero/stage_1_and_2.py, 0.19.8) does
    ``flat_grad_partition = self.flatten_dense_tensors_aligned(self.averaged_gradients[i], ...)``
    (``self.flatten(...)`` off the last rank) then
    ``single_grad_partition = flat_grad_partition.to(self.single_partition_of_fp32_groups[i].dtype)``
    and only after that ``del flat_grad_partition``, ``free_grad_in_param_list(self.params_in_partition[i])``
    and ``self.averaged_gradients[i] = None``. averaged_gradients holds views of the contiguous
    gradient buffer (grads_in_partition via param.grad; get_flat_partition(..., return_tensor_list=True)
    in the backward epilogue), so at the cast the 16-bit gradients, their flat copy (P_t/N in the
    gradient dtype) and the fp32 copy coexist, with the optimizer state of the steps after the first.

    Only when the gradients are 16-bit: with fp32 gradients .to(fp32) returns the flat tensor itself,
    whose 4 P_t/N step_transient_bytes counts already. The plan has no grad_accum_dtype; memplan's
    DeepSpeed configs leave data_types unset, so DeepSpeedEngine.get_data_types takes the model dtype
    (deepspeed/runtime/engine.py) and the pre-flattened fp32 path (_use_compact_grad_partition_buffer,
    gradient_accumulation_dtype fp32 on a 16-bit model) is not taken. Independent of the wrapped
    optimizer (Trainer's torch AdamW, the harness's torch AdamW, FusedAdam alike)."""
    if not _zero12_on_gpu(ctx) or ctx.compute_bytes >= 4:
        return 0
    return ctx.shard(ctx.compute_bytes * ctx.total_trainable, at_stage=1)


def zero12_init_states_grad_bytes(ctx: Context) -> int:
    """ZeRO-1/2 makes an fp32 zero gradient for this rank's master partition at initialize:
    DeepSpeedZeroOptimizer.__init__ calls initialize_optimizer_states() (stage_1_and_2.py, 0.19.8),
    which sets ``single_partition_of_fp32_groups[i].grad = torch.zeros(partition_size,
    dtype=single_partition_of_fp32_groups[i].dtype, device=self.device)`` for every group and, without
    cpu_offload, sets them back to None at the end. self.device is the GPU unless the optimizer is
    offloaded. At that moment the flat 16-bit parameters, the fp32 masters and these zeros (one more
    master's worth, 4 P_t/N with fp32 masters) are on the GPU; the model's original parameter tensors
    were freed when _update_model_bit16_weights pointed them into the flat buffer, before the masters
    were made (init_phase: the flatten moment has no masters)."""
    if not _zero12_on_gpu(ctx):
        return 0
    return sum(ctx.shard(p.trainable * (optimizer.master_bytes_per_param(ctx, c) or ctx.compute_bytes), at_stage=1)
               for c, p in ctx.parts.items())


def init_transient_bytes(ctx: Context) -> int:
    """DeepSpeed ZeRO-1/2 flattens the trainable 16-bit parameters into one buffer at initialize:
    for a moment the old tensors and the flat copy coexist (stage_1_and_2.py, flatten_dense_tensors_aligned
    with flatten_on_accelerator, before the fp32 masters are cloned from the flat buffer)."""
    if ctx.is_deepspeed and ctx.zero_stage in (0, 1, 2) and ctx.training:
        return sum(p.trainable_held_bytes for p in ctx.parts.values())
    return 0


def lm_head_grad_bytes(ctx: Context) -> int:
    """Gradient of the trainable lm_head copy, produced at the very start of backward (FSDP2: part of
    its unit's reduce-scatter term, fsdp.reduce_scatter_bytes)."""
    if ctx.is_fsdp:
        return 0
    llm = ctx.profile.llm
    if llm is None or "lm_head" not in ctx.plan.components.llm.modules_to_save or not ctx.training:
        return 0
    return llm.embedding_params * ctx.parts[Component.LLM].copies_bytes
