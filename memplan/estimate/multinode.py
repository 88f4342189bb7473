"""More than one node: NCCL communicators per process group, inter-node buffers, host RAM per node.

Measured (reports/probes/, H100): one NCCL communicator with its intra-node buffers is the calibrated
``nccl_bytes`` (1.6-1.8 GiB device - reserved under DeepSpeed or several GPUs). Not measured here,
taken as assumptions and labelled so in docs/methodology.md:
- every further process group a rank communicates in holds its own communicator of the same size
  (NCCL allocates channel buffers per communicator: ncclCommInitRank, src/init.cc); FSDP2's HSDP
  uses two (shard and replicate dimensions of the DeviceMesh), ZeRO++ hpZ adds the intra-node
  secondary group (deepspeed/utils/groups.py, _create_zero_param_parallel_group);
- a communicator spanning nodes adds network-transport buffers on the GPU (GPUDirect RDMA):
  NCCL_BUFFSIZE (4 MiB, the SIMPLE protocol) x 2 (send, receive) x 8 channels = 64 MiB.
"""

from __future__ import annotations

from memplan.estimate.context import Context
from memplan.spec.calibration import Calibration

NCCL_BUFFSIZE = 4 * 2**20  # NCCL's default buffer per channel and direction (NCCL_BUFFSIZE)
NET_CHANNELS = 8  # assumption: channels an inter-node ring opens on InfiniBand/RoCE
INTER_NODE_BUFFER_BYTES = NCCL_BUFFSIZE * 2 * NET_CHANNELS


def communicators(ctx: Context) -> list[bool]:
    """One entry per NCCL communicator a rank holds: True where its group spans nodes."""
    hardware, engine = ctx.plan.hardware, ctx.plan.engine
    spans = hardware.nodes > 1
    if ctx.is_fsdp and engine.fsdp.hsdp and hardware.nodes > 1:
        return [False, True]  # shard within the node, replicate across nodes
    if ctx.is_deepspeed and engine.zero_hpz_partition_size > 1:
        return [spans, engine.zero_hpz_partition_size > hardware.gpus_per_node]
    return [spans]


def nccl_extra_bytes(ctx: Context, calibration: Calibration) -> int:
    """Device bytes beyond the one calibrated communicator: (communicators - 1) x nccl_bytes plus the
    inter-node buffers of each spanning communicator. 0 on one node with one process group."""
    groups = communicators(ctx)
    return (len(groups) - 1) * calibration.nccl_bytes + sum(groups) * INTER_NODE_BUFFER_BYTES


def share_per_node(ctx: Context, node_wide_bytes: int) -> int:
    """A node's share of state partitioned 1/N over all ranks: its gpus_per_node ranks' partitions."""
    return -(-node_wide_bytes // ctx.plan.hardware.nodes)
