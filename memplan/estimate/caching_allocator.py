"""PyTorch's CUDA caching allocator, replayed in Python: which segments a sequence of requests reserves.

The estimate's ``needed`` sizes fragmentation on average (memplan/estimate/overhead.py). Close to the
card that does not decide: a run fails when no free block is as large as its request and no new segment
fits, and which blocks are free then is a matter of the order of the requests (h100-layout-b: a segment the
size of the fp32 logits, freed by an earlier step, split by a block placed in it afterwards). Given that
order (a trace recorded by ``memplan probe --trace-out``), this module does what the allocator does, rule
for rule, so the outcome at any card size can be read off without the card.

Rules, from c10/cuda/CUDACachingAllocator.cpp (PyTorch 2.x, the default allocator; expandable segments not
modelled here):

- ``round_size``: a request is rounded up to a multiple of kMinBlockSize = 512 bytes (no
  ``roundup_power2_divisions``);
- ``get_pool``: requests up to kSmallSize = 1 MiB go to the small pool, the rest to the large pool;
- ``get_free_block``: the smallest cached block of the pool on the request's stream at least as large as
  the request (ties to the lowest address: BlockComparatorSize orders by stream, size, address); with
  ``max_split_size_mb``, a request under the limit never takes a block at or over it, and a request at or
  over it takes one only if it is less than ``max_non_split_rounding_size`` (default kLargeBuffer = 20 MiB)
  larger;
- ``get_allocation_size``: a new segment is kSmallBuffer = 2 MiB for the small pool, kLargeBuffer =
  20 MiB for requests under kMinLargeAlloc = 10 MiB, else the request rounded up to kRoundLarge = 2 MiB;
- ``alloc_block``: under ``set_per_process_memory_fraction`` (how a card is emulated) a new segment fails
  when the reserved bytes plus it exceed the limit; on a real card, when the device has no room;
- ``malloc``: find a free block; else a new segment; else (with max_split_size_mb) release oversize cached
  blocks (``release_available_cached_blocks``) and retry; else release every cached segment that is wholly
  free (``release_cached_blocks``) and retry; else out of memory;
- ``should_split``: the block found is split, the request taking its front, when what remains is at least
  512 bytes (small pool) or more than 1 MiB (large pool, and the request under max_split_size);
- ``free_block``: a freed block merges with its free neighbours in the same segment.

Ties between equal-sized free blocks go to the lower address, so where the driver puts each segment matters
(docs/accuracy.md, replay-a4: large segments at falling addresses). Given the addresses the driver gave the
traced run's segments (``recorded_addresses``: per segment size, in order), a new segment takes the next one
of its size, unless a live segment of the replay covers it (a capped replay frees and makes segments at other
moments than the traced run, and the driver reuses freed addresses); beyond them, in that case, and without
them, segments get rising addresses above every recorded one.

Bytes are integers throughout. Pure: no torch.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

MIN_BLOCK_SIZE = 512  # kMinBlockSize
SMALL_SIZE = 1_048_576  # kSmallSize: largest request of the small pool
SMALL_BUFFER = 2_097_152  # kSmallBuffer: a small-pool segment
LARGE_BUFFER = 20_971_520  # kLargeBuffer: a segment for requests under MIN_LARGE_ALLOC; oversize rounding limit
MIN_LARGE_ALLOC = 10_485_760  # kMinLargeAlloc
ROUND_LARGE = 2_097_152  # kRoundLarge


def round_size(size: int) -> int:
    """The block size of a request: max(512, size rounded up to a multiple of 512) (round_size)."""
    if size < MIN_BLOCK_SIZE:
        return MIN_BLOCK_SIZE
    return MIN_BLOCK_SIZE * ((size + MIN_BLOCK_SIZE - 1) // MIN_BLOCK_SIZE)


def allocation_size(size: int) -> int:
    """The segment a request of ``size`` (rounded) gets when nothing cached serves it (get_allocation_size)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * ((size + ROUND_LARGE - 1) // ROUND_LARGE)


@dataclass(eq=False)
class Block:
    """A piece of a segment: [address, address + size), allocated or cached; neighbours in its segment."""

    address: int
    size: int
    stream: int
    small: bool
    allocated: bool = False
    prev: Block | None = None
    next: Block | None = None

    def key(self) -> tuple[int, int, int]:
        return (self.stream, self.size, self.address)

    @property
    def whole_segment(self) -> bool:
        return self.prev is None and self.next is None


@dataclass
class Failure:
    """An out-of-memory: the request, and the allocator's totals when it failed (after the releases)."""

    requested_bytes: int
    reserved_bytes: int
    allocated_bytes: int
    largest_free_block_bytes: int


@dataclass
class CachingAllocator:
    """The allocator's state: segments, cached free blocks per pool, totals and peaks.

    ``limit_bytes``: what the allocator may reserve (a card's CUDA-visible total less what lies outside
    the allocator, or an emulated cap); None: unlimited. ``max_split_bytes``: max_split_size_mb in bytes
    (None: unset, every block may be split). ``max_non_split_rounding_bytes``: how much larger than an
    oversize request a cached oversize block it reuses may be. ``recorded_addresses``: the driver's addresses
    of the traced run's segments, per size in the order it got them (module docstring).
    """

    limit_bytes: int | None = None
    max_split_bytes: int | None = None
    max_non_split_rounding_bytes: int = LARGE_BUFFER
    recorded_addresses: dict[int, list[int]] | None = None
    reserved_bytes: int = 0
    allocated_bytes: int = 0
    peak_reserved_bytes: int = 0
    peak_allocated_bytes: int = 0
    failure: Failure | None = None
    _free: dict[bool, list[tuple[int, int, int]]] = field(default_factory=lambda: {True: [], False: []})
    _blocks: dict[tuple[int, int, int], Block] = field(default_factory=dict)
    _next_address: int = 0
    _recorded: dict[int, deque] = field(default_factory=dict)
    _segments: dict[int, int] = field(default_factory=dict)  # live segments: address -> size

    @property
    def segments(self) -> int:
        return len(self._segments)

    def __post_init__(self) -> None:
        recorded = self.recorded_addresses or {}
        self._recorded = {size: deque(addresses) for size, addresses in recorded.items()}
        ends = [address + size for size, addresses in recorded.items() for address in addresses]
        self._next_address = max(ends, default=0) + ROUND_LARGE

    # -- the pool of cached blocks ------------------------------------------------------------------
    def _cache(self, block: Block) -> None:
        bisect.insort(self._free[block.small], block.key())
        self._blocks[block.key()] = block

    def _uncache(self, block: Block) -> None:
        keys = self._free[block.small]
        keys.pop(bisect.bisect_left(keys, block.key()))
        del self._blocks[block.key()]

    def _oversize(self, size: int) -> bool:
        return self.max_split_bytes is not None and size >= self.max_split_bytes

    def _find_free(self, size: int, stream: int, small: bool) -> Block | None:
        """get_free_block: the smallest cached block on ``stream`` of at least ``size`` bytes."""
        keys = self._free[small]
        index = bisect.bisect_left(keys, (stream, size, -1))
        if index == len(keys) or keys[index][0] != stream:
            return None
        block = self._blocks[keys[index]]
        if self.max_split_bytes is not None and not small:
            if size < self.max_split_bytes <= block.size:
                return None  # do not return an oversized block for a small request
            if size >= self.max_split_bytes and block.size >= size + self.max_non_split_rounding_bytes:
                return None  # an oversized block only within the rounding limit
        self._uncache(block)
        return block

    # -- segments ----------------------------------------------------------------------------------
    def _new_segment(self, size: int, stream: int, small: bool) -> Block | None:
        """alloc_block: a fresh segment of ``size`` bytes, or None when the limit would be passed."""
        if self.limit_bytes is not None and self.reserved_bytes + size > self.limit_bytes:
            return None
        recorded = self._recorded.get(size)
        address = recorded.popleft() if recorded else None
        if address is None or self._covered(address, size):
            address = self._next_address
            self._next_address += size + ROUND_LARGE  # segments never touch: no merge across them
        block = Block(address=address, size=size, stream=stream, small=small)
        self._segments[address] = size
        self.reserved_bytes += size
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block

    def _covered(self, address: int, size: int) -> bool:
        """Whether [address, address + size) overlaps a live segment."""
        return any(start < address + size and address < start + length for start, length in self._segments.items())

    def _release(self, block: Block) -> None:
        self._uncache(block)
        del self._segments[block.address]
        self.reserved_bytes -= block.size

    def release_cached_blocks(self) -> None:
        """release_cached_blocks (also what torch.cuda.empty_cache does): free every wholly free segment."""
        for small in (False, True):
            for key in list(self._free[small]):
                block = self._blocks[key]
                if block.whole_segment:
                    self._release(block)

    def _release_oversize(self, size: int, stream: int) -> bool:
        """release_available_cached_blocks: with max_split_size set, free the cached oversize segment
        that would serve ``size``, else oversize segments from the largest down until ``size`` bytes are
        freed. False when that is not possible (and always without max_split_size)."""
        if self.max_split_bytes is None:
            return False
        wanted = max(size, self.max_split_bytes)
        keys = self._free[False]
        index = bisect.bisect_left(keys, (stream, wanted, -1))
        if index < len(keys) and keys[index][0] == stream:
            self._release(self._blocks[keys[index]])
            return True
        released = 0
        index -= 1
        while released < wanted and index >= 0 and keys[index][0] == stream and keys[index][1] >= self.max_split_bytes:
            block = self._blocks[keys[index]]
            index -= 1
            if block.whole_segment:
                released += block.size
                self._release(block)
        return released >= wanted

    def _largest_free(self) -> int:
        return max((key[1] for keys in self._free.values() for key in keys), default=0)

    # -- requests ----------------------------------------------------------------------------------
    def malloc(self, size: int, stream: int = 0) -> Block | None:
        """A block for a request of ``size`` bytes on ``stream``, or None (``failure`` filled) when the
        allocator would raise OutOfMemoryError."""
        rounded = round_size(size)
        small = rounded <= SMALL_SIZE
        block = self._find_free(rounded, stream, small)
        if block is None:
            segment = allocation_size(rounded)
            block = self._new_segment(segment, stream, small)
            if block is None and self._release_oversize(rounded, stream):
                block = self._new_segment(segment, stream, small)
            if block is None:
                self.release_cached_blocks()
                block = self._new_segment(segment, stream, small)
            if block is None:
                self.failure = Failure(requested_bytes=rounded, reserved_bytes=self.reserved_bytes,
                                       allocated_bytes=self.allocated_bytes,
                                       largest_free_block_bytes=self._largest_free())
                return None
        if self._should_split(block, rounded):
            rest = Block(address=block.address + rounded, size=block.size - rounded, stream=stream, small=small,
                         prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, rounded
            self._cache(rest)
        block.allocated = True
        self.allocated_bytes += block.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return block

    def _should_split(self, block: Block, size: int) -> bool:
        remaining = block.size - size
        if block.small:
            return remaining >= MIN_BLOCK_SIZE
        return not self._oversize(size) and remaining > SMALL_SIZE

    def free(self, block: Block) -> None:
        """free_block: the block returns to its pool, merged with free neighbours (try_merge_blocks)."""
        block.allocated = False
        self.allocated_bytes -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._uncache(neighbour)
                if neighbour is block.prev:
                    block.address, block.prev = neighbour.address, neighbour.prev
                    if neighbour.prev is not None:
                        neighbour.prev.next = block
                else:
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
                block.size += neighbour.size
        self._cache(block)
