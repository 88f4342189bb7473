"""Step time from mechanisms: seconds per training step on one rank, term by term, each with its source.

What a step asks for (FLOPs per kernel class, module calls, gathered tensors) comes from
memplan.planning.workload; here it meets the card (memplan/profiles/gpus.yaml), the engine's knobs and
the fitted terms (memplan.spec.calibration.StepTimeTerms, `memplan calibrate`). Terms (seconds):

- ``gemm``, ``attention``, ``vision``, ``sam2``: FLOPs / (rated dense bf16 x the card's fitted
  efficiency for that kernel class);
- ``eager_scores``: eager attention materialises the b x heads x s^2/2 causal scores; the softmax and
  its backward read and write them (EAGER_SCORE_PASSES passes of 2 bytes) at the HBM rate
  (transformers eager_attention_forward: matmul, softmax, dropout, matmul); SDPA/flash never store them
  (Dao et al. 2022, arXiv 2205.14135 sec. 3);
- ``framework``: module calls x module_call_s (Python dispatch and kernel launches per module and pass;
  fitted: a small model on a fast card is bound by it);
- ``zero3_gather``: module calls x zero3_fetch_s (DeepSpeed's pre- and post-module hooks fetch and
  release every module's parameters on every pass: partitioned_param_coordinator.py fetch_sub_module,
  release_sub_module; fitted) + gathers per step x COLLECTIVE_LATENCY_S (one all_gather_coalesced per
  module holding a partitioned tensor) + the gathered bytes (N-1)/N x elements x e over the link; with prefetching (stage3_prefetch_bucket_size > 0) the bytes hide behind
  compute up to the compute time (DeepSpeed prefetches the next modules of its recorded trace);
  tensors at or below stage3_param_persistence_threshold are never gathered;
- ``param_offload``: ZeRO-Infinity (arXiv 2104.07857) copies the rank's partition host -> device for
  every pass that gathers: passes x P e / N over PCIe (pinned);
- ``grad_sync``: DDP all-reduce 2 (N-1)/N x gradient bytes (Patarasuk & Yuan 2009, ring), bucketed and
  overlapped with backward (torch DistributedDataParallel, bucket_cap_mb=25); ZeRO-1/2/3 reduce-scatter
  (N-1)/N x bytes in reduce_bucket_size buckets, hidden behind backward with overlap_comm
  (stage_1_and_2.py, overlap_comm); DeepSpeed stage 0 all-reduces after backward; each collective
  adds COLLECTIVE_LATENCY_S;
- ``param_allgather``: ZeRO-1/2 all-gather the updated 16-bit partitions after the step: (N-1)/N x
  P_t e over the link, in allgather_bucket_size buckets;
- ``offload_copy``: ZeRO-Offload (arXiv 2101.06840) moves gradients down as fp32 (4 bytes: stage_1_and_2.py
  async_inplace_copy_grad_to_fp32_buffer_from_gpu casts on the GPU) and the updated 16-bit partition up
  (2 bytes: the bit16_partition_buffer copy after the CPU step), per trainable parameter of the rank's
  partition, over PCIe at PINNED_EFFICIENCY of the link (DeepSpeed's offload pin_memory default);
- ``cpu_adam``: the rank's partition / (cpu_adam_params_per_core_s x host cores per rank)
  (DeepSpeedCPUAdam runs one OpenMP thread per core: deepspeed/ops/adam/cpu_adam.py);
- ``gpu_optimizer``: a memory-bound step: GPU_ADAM_BYTES_PER_PARAM per trainable parameter at the HBM
  rate, plus one module call per trainable tensor without torch's foreach path.

The efficiencies and the three host terms are fitted per card on probe records (memplan.planning.stepfit);
every other constant is a rated figure or a library's behaviour.

The optimizer-step phase (what the probe times around ``engine.step()``, records' ``phase_times_s``) is
OPTIMIZER_PHASE_SHARES of the terms: all of ``cpu_adam``, ``gpu_optimizer`` and ``param_allgather``, and
the 2 of the 6 bytes of ``offload_copy`` that go up after the CPU step (the 4-byte gradient copies run in
the backward's reduction hooks: stage_1_and_2.py reduce_ipg_grads -> async_inplace_copy_grad_to_fp32_buffer_from_gpu).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from memplan.planning.workload import KERNEL_CLASSES, Flops, Workload, workload
from memplan.spec.calibration import StepTimeTerms
from memplan.spec.gpus import GpuSpec, gpu_for
from memplan.spec.plan import Engine, Plan
from memplan.spec.profile import Profile

# Achieved / rated bandwidth of NVLink and PCIe for NCCL collectives (nccl-tests bus bandwidth is
# typically 70-85% of the link's rate) and of HBM for streaming kernels.
LINK_EFFICIENCY = 0.75
# Pinned host <-> device copies reach about 80% of the PCIe payload rate; pageable copies go through a
# staging buffer at about half of that (CUDA C++ Best Practices Guide, "Pinned Memory").
PINNED_EFFICIENCY = 0.8
PAGEABLE_EFFICIENCY = 0.4
COLLECTIVE_LATENCY_S = 50e-6  # per collective launch (NCCL ring, tens of microseconds)
DDP_BUCKET_BYTES = 25 * 1024**2  # torch.nn.parallel.DistributedDataParallel bucket_cap_mb=25
GPU_ADAM_BYTES_PER_PARAM = 30  # fp32 master, m, v read+write (24) + grad read (4) + 16-bit copy (2)
EAGER_SCORE_PASSES = 6  # score writes/reads: matmul out, softmax in/out, dropout, matmul in; backward again
# The slowest over the fastest steady step of one plan run more than once on one kind of card, with nothing in
# the plan changed: the largest over the 14 plans of reports/probes timed two to four times (Sa2VA-1B ZeRO-2 +
# optimizer offload at micro-batch 2 and 4 tiles on H100s: 0.848 s in set j, 0.517-0.542 s in set n's three runs
# on another machine a day later; median 1.11). Within one sitting on one machine set n's three plans spread
# 1.00-1.07; the spread is between machines. Measured, not a model term: a single run can sit this far from
# another run of the same plan (benchmarks/steptime_repeats.py; tests/test_steptime_batch.py recomputes it from
# the records; docs/benchmarks.md).
REPEAT_SPREAD = 1.64
HOST_CORES_PER_GPU = 16  # assumed when a record or the caller gives none (the H200 hosts: 16 per GPU)
TERMS = (*KERNEL_CLASSES, "eager_scores", "framework", "zero3_gather", "param_offload", "grad_sync",
         "param_allgather", "offload_copy", "cpu_adam", "gpu_optimizer")
OFFLOAD_DOWN_BYTES, OFFLOAD_UP_BYTES = 4, 2  # fp32 gradients down, the updated 16-bit partition up
OPTIMIZER_PHASE_SHARES = {"cpu_adam": 1.0, "gpu_optimizer": 1.0, "param_allgather": 1.0,
                          "offload_copy": OFFLOAD_UP_BYTES / (OFFLOAD_DOWN_BYTES + OFFLOAD_UP_BYTES)}


def optimizer_phase_seconds(breakdown: dict[str, float]) -> float:
    """Seconds of a breakdown that fall in the optimizer-step phase (OPTIMIZER_PHASE_SHARES)."""
    return sum(breakdown.get(term, 0.0) * share for term, share in OPTIMIZER_PHASE_SHARES.items())


@dataclass(frozen=True)
class StepTime:
    """Seconds per step on one rank and where they go (``breakdown``: TERMS -> seconds)."""

    seconds: float
    breakdown: dict[str, float]
    micro_batch: int
    gpu: str
    flops: float = 0.0
    num_gpus: int = 1
    tokens: int = 0  # LLM tokens per step per GPU
    card_terms: bool = False  # the calibration has terms fitted on this card (else the default terms)

    @property
    def optimizer_step_seconds(self) -> float:
        """The part of the step inside ``engine.step()`` / ``optimizer.step()`` (optimizer_phase_seconds)."""
        return optimizer_phase_seconds(self.breakdown)

    @property
    def per_sample(self) -> float:
        """Seconds per sample on one GPU (gradient accumulation keeps the batch)."""
        return self.seconds / self.micro_batch

    @property
    def samples_per_s(self) -> float:
        """Samples per second of the whole job: num_gpus x micro_batch / step seconds (data parallel)."""
        return self.num_gpus * self.micro_batch / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.num_gpus * self.tokens / self.seconds if self.seconds else 0.0

    def epoch_seconds(self, dataset_samples: int) -> float:
        """Seconds to see ``dataset_samples`` samples once."""
        return dataset_samples / self.samples_per_s if self.samples_per_s else math.inf

    def epoch_cost(self, dataset_samples: int, price_per_gpu_hour: float) -> float:
        """Price of one epoch: hours x GPUs x price per GPU-hour."""
        return self.epoch_seconds(dataset_samples) / 3600 * self.num_gpus * price_per_gpu_hour

    def to_dict(self, dataset_samples: int | None = None, price: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seconds": self.seconds, "per_sample_seconds": self.per_sample, "gpu": self.gpu, "flops": self.flops,
            "samples_per_s": self.samples_per_s, "tokens_per_s": self.tokens_per_s,
            "breakdown": dict(self.breakdown), "optimizer_step_seconds": self.optimizer_step_seconds,
            "card_terms": self.card_terms}
        if dataset_samples:
            out["epoch_seconds"] = self.epoch_seconds(dataset_samples)
            if price is not None:
                out["epoch_cost"] = self.epoch_cost(dataset_samples, price)
        return out


@lru_cache(maxsize=1)
def default_terms() -> StepTimeTerms:
    """The shipped calibration's step-time terms (profiles/calibration.yaml), else the defaults."""
    from memplan.spec.loading import load_calibration

    return load_calibration().step_time or StepTimeTerms()


@lru_cache(maxsize=256)
def _link(gpu: GpuSpec, num_gpus: int) -> float:
    """Achieved bytes/s of a ring collective over ``num_gpus`` cards."""
    return gpu.collective_gbps(num_gpus) * 1e9 * LINK_EFFICIENCY


def _pcie(gpu: GpuSpec, pinned: bool = True) -> float:
    return gpu.pcie_gbps * 1e9 * (PINNED_EFFICIENCY if pinned else PAGEABLE_EFFICIENCY)


def compute_terms(work: Workload, gpu: GpuSpec, terms: StepTimeTerms) -> dict[str, float]:
    """FLOPs per kernel class at the card's fitted efficiency; eager score traffic; module calls."""
    efficiency = terms.for_card(gpu.name)
    peak = gpu.bf16_tflops * 1e12
    out = {k: work.kernel_flops.get(k, 0.0) / (peak * getattr(efficiency, k)) for k in KERNEL_CLASSES}
    out["eager_scores"] = EAGER_SCORE_PASSES * 2 * work.eager_score_elements / (gpu.memory_gbps * 1e9)
    out["framework"] = work.module_calls * terms.module_call_s
    return out


def zero3_terms(work: Workload, engine: Engine, *, num_gpus: int, gpu: GpuSpec, terms: StepTimeTerms,
                compute_s: float) -> dict[str, float]:
    """ZeRO-3 gathers (count x latency + exposed bytes) and parameter offload copies."""
    gathers, elements = work.gathers(engine.stage3_param_persistence_threshold)
    n = num_gpus
    bytes_s = (n - 1) / n * elements * work.compute_bytes / _link(gpu, n) if n > 1 else 0.0
    exposed = max(0.0, bytes_s - compute_s) if engine.stage3_prefetch_bucket_size > 0 else bytes_s
    offload = 0.0
    if engine.offload_params != "none":
        offload = elements * work.compute_bytes / n / _pcie(gpu)
    hooks = work.module_calls * terms.zero3_fetch_s
    return {"zero3_gather": hooks + gathers * COLLECTIVE_LATENCY_S + exposed, "param_offload": offload}


def sync_terms(work: Workload, engine: Engine, *, num_gpus: int, gpu: GpuSpec, backward_s: float) -> dict[str, float]:
    """Gradient reduction (exposed part) and ZeRO-1/2's parameter all-gather after the step."""
    n = num_gpus
    if not work.training or not work.trainable or n == 1:
        return {"grad_sync": 0.0, "param_allgather": 0.0}
    deepspeed = engine.kind == "deepspeed"
    stage = engine.zero_stage if deepspeed else 0
    grad_bytes = work.trainable * work.compute_bytes
    link = _link(gpu, n)
    if not deepspeed:  # DDP: bucketed all-reduce overlapped with backward
        launches = math.ceil(grad_bytes / DDP_BUCKET_BYTES)
        reduce_s = 2 * (n - 1) / n * grad_bytes / link + launches * COLLECTIVE_LATENCY_S
        return {"grad_sync": max(0.0, reduce_s - backward_s), "param_allgather": 0.0}
    launches = math.ceil(work.trainable / max(engine.reduce_bucket_size, 1))
    volume = 2 * (n - 1) / n if stage == 0 else (n - 1) / n
    reduce_s = volume * grad_bytes / link + launches * COLLECTIVE_LATENCY_S
    hidden = backward_s if engine.overlap and stage >= 1 else 0.0
    post = 0.0
    if stage in (1, 2):
        gather_launches = math.ceil(work.trainable / max(engine.allgather_bucket_size, 1))
        post = (n - 1) / n * grad_bytes / link + gather_launches * COLLECTIVE_LATENCY_S
    return {"grad_sync": max(0.0, reduce_s - hidden), "param_allgather": post}


def optimizer_terms(work: Workload, engine: Engine, *, num_gpus: int, gpu: GpuSpec, terms: StepTimeTerms,
                    host_cores: int | None, foreach: bool = True) -> dict[str, float]:
    """The optimizer step: CPU Adam with its PCIe copies (ZeRO-Offload), or a memory-bound GPU step."""
    out = {"offload_copy": 0.0, "cpu_adam": 0.0, "gpu_optimizer": 0.0}
    if not work.training or not work.trainable:
        return out
    deepspeed = engine.kind == "deepspeed"
    shard = num_gpus if deepspeed and engine.zero_stage >= 1 else 1
    partition = work.trainable / shard
    if deepspeed and engine.offload_optimizer != "none":
        cores = max(1, (host_cores or HOST_CORES_PER_GPU * num_gpus) // num_gpus)
        out["offload_copy"] = (OFFLOAD_DOWN_BYTES + OFFLOAD_UP_BYTES) * partition / _pcie(gpu)
        out["cpu_adam"] = partition / (terms.cpu_adam_params_per_core_s * cores)
    else:
        calls = 0 if foreach else work.trainable_tensors
        out["gpu_optimizer"] = (GPU_ADAM_BYTES_PER_PARAM * partition / (gpu.memory_gbps * 1e9 * LINK_EFFICIENCY)
                                + calls * terms.module_call_s)
    return out


def time_step(work: Workload, engine: Engine, *, num_gpus: int, gpu: GpuSpec, terms: StepTimeTerms | None = None,
              host_cores: int | None = None, foreach: bool = True) -> StepTime:
    """Seconds of one step on one rank: the sum of TERMS (memplan.planning.steptime docstring)."""
    terms = terms or default_terms()
    card_terms = gpu.name in terms.cards
    terms = terms.on_card(gpu.name)  # a card's own fit, where the calibration has one
    key = (gpu.name, id(terms))
    cached = work.cache.get(key)
    if cached is None or cached[0] is not terms:  # the compute terms depend on the card and the terms only
        computed = compute_terms(work, gpu, terms)
        share = (work.backward_flops + work.recompute_flops) / work.total_flops if work.total_flops else 0.0
        cached = work.cache[key] = (terms, computed, sum(computed[k] for k in KERNEL_CLASSES), share)
    _, computed, compute_s, backward_share = cached
    breakdown = dict(computed)
    deepspeed = engine.kind == "deepspeed"
    if deepspeed and engine.zero_stage == 3:
        breakdown.update(zero3_terms(work, engine, num_gpus=num_gpus, gpu=gpu, terms=terms, compute_s=compute_s))
    else:
        breakdown.update({"zero3_gather": 0.0, "param_offload": 0.0})
    breakdown.update(sync_terms(work, engine, num_gpus=num_gpus, gpu=gpu, backward_s=compute_s * backward_share))
    breakdown.update(optimizer_terms(work, engine, num_gpus=num_gpus, gpu=gpu, terms=terms, host_cores=host_cores,
                                     foreach=foreach))
    step = StepTime(sum(breakdown.values()), breakdown, work.micro_batch, gpu.name, work.total_flops,
                    num_gpus, work.tokens, card_terms)
    return step


def step_time(profile: Profile, plan: Plan, gpu: GpuSpec | None = None, *, terms: StepTimeTerms | None = None,
              host_cores: int | None = None) -> StepTime:
    """Seconds per step of ``plan`` on its GPU (plan.hardware.gpu, or the catalogued card whose VRAM is
    nearest the plan's)."""
    gpu = gpu or gpu_for(plan.hardware.gpu, plan.hardware.vram_gib)
    return time_step(workload(profile, plan), plan.engine, num_gpus=plan.hardware.num_gpus, gpu=gpu, terms=terms,
                     host_cores=host_cores, foreach=plan.optimizer.foreach)


__all__ = ["Flops", "StepTime", "TERMS", "Workload", "default_terms", "step_time", "time_step", "workload"]
