"""The prefix cache's bookkeeping: which prompt prefixes have their backbone KV rows kept, in
which blocks, and which block to evict. Torch-free (the rows live in server/engine/kv_blocks.py).

A block holds the KV rows of one aligned prefill chunk, positions [k*chunk, (k+1)*chunk), of a
prompt that starts at position 0. It is named by a chain hash: h_k = H(h_{k-1}, frames of chunk k),
with h_{-1} the root of the request's tenant, so a name stands for the whole prefix
[0, (k+1)*chunk) of one tenant's prompt and two prompts share block k exactly when they are the
same tenant's and their first k+1 chunks are the same frames. A request looks up its chunks in
order and stops at the first miss (`match`); the rows it finds are copied into its slot instead
of being prefilled.

No block is shared across tenants: a hit (an earlier first audio) would tell one tenant what
another sent recently. Sharing a prefix between tenants, say a public voice, would have to be
made explicit; nothing is.

Why the rows are exact: positions are absolute and attention is causal, so the rows of [0, P)
depend only on those positions' frames; and the engine prefills every prompt in chunks aligned
to multiples of `chunk` (server/engine/scheduler.py), so a block's rows were computed by the
very calls a cold prefill of the same prefix makes. A block is written only from a prompt that
started at 0 (`Request.block_hashes` is empty otherwise): a conversation's later turns, which
start mid-chunk, never feed it.

Eviction is least recently used among blocks no admitted request is about to copy (`pinned`).
A lookup touches its blocks deepest first, so a shared prefix stays longer than the branches
that follow it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from server.tenants import DEFAULT_TENANT

BlockHash = bytes

_ROOT = b"csm-prefix/1"


def chain_root(tenant: str) -> BlockHash:
    """h_{-1} of the tenant's prompts (server/tenants.py; the default tenant's is _ROOT)."""
    if tenant == DEFAULT_TENANT:
        return _ROOT
    return hashlib.blake2b(_ROOT + b"\0tenant\0" + tenant.encode(), digest_size=16).digest()


def chain_hashes(chunks: Iterable[bytes], tenant: str = DEFAULT_TENANT) -> tuple[BlockHash, ...]:
    """h_k = H(h_{k-1} || chunk_k), from the tenant's root: the name of each prefix [0, (k+1)*chunk)."""
    out, parent = [], chain_root(tenant)
    for data in chunks:
        parent = hashlib.blake2b(parent + data, digest_size=16).digest()
        out.append(parent)
    return tuple(out)


@dataclass(slots=True, frozen=True)
class PrefixCacheStats:
    num_blocks: int
    block_positions: int
    block_bytes: int
    blocks_used: int  # blocks holding rows (written or being written)
    lookups: int  # admitted requests whose prompt had at least one whole chunk to look up
    hits: int  # lookups that found at least one block
    hit_positions: int  # prompt positions copied instead of prefilled
    evictions: int  # blocks evicted to make room
    query_positions: int = 0  # prompt positions of the whole chunks looked up (hit or not)

    @property
    def misses(self) -> int:
        return self.lookups - self.hits

    @property
    def bytes_used(self) -> int:
        return self.blocks_used * self.block_bytes

    @property
    def capacity_bytes(self) -> int:
        return self.num_blocks * self.block_bytes


class PrefixIndex:
    """Block ids 0..num_blocks-1, each free, being written (allocated, not yet committed) or
    holding the rows of one prefix (committed: found by `match`)."""

    def __init__(self, num_blocks: int, block_positions: int, block_bytes: int):
        if num_blocks < 1 or block_positions < 1:
            raise ValueError("a prefix cache needs at least one block of at least one position")
        self.num_blocks = num_blocks
        self.block_positions = block_positions
        self.block_bytes = block_bytes
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() gives the lowest id
        self._by_hash: dict[BlockHash, int] = {}  # committed and being written
        self._hash_of: dict[int, BlockHash] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()  # committed blocks, least recent first
        self._pins: dict[int, int] = {}  # block -> admitted requests about to copy it
        self._writing: set[int] = set()
        self._lookups = self._hits = self._hit_positions = self._evictions = self._query_positions = 0

    # -- lookups (admission) -----------------------------------------------------------
    def match(self, hashes: tuple[BlockHash, ...], max_blocks: int) -> list[int]:
        """The committed blocks of the longest cached prefix of `hashes` (at most max_blocks),
        pinned until `unpin`. Counts one lookup."""
        blocks: list[int] = []
        for h in hashes[:max_blocks]:
            block = self._by_hash.get(h)
            if block is None or block in self._writing:
                break
            blocks.append(block)
        if max_blocks > 0 and hashes:
            self._lookups += 1
            self._hits += bool(blocks)
            self._hit_positions += len(blocks) * self.block_positions
            self._query_positions += min(len(hashes), max_blocks) * self.block_positions
        for block in reversed(blocks):  # deepest first: the shared root ends most recent
            self._lru.move_to_end(block)
            self._pins[block] = self._pins.get(block, 0) + 1
        return blocks

    def unpin(self, blocks: Iterable[int]) -> None:
        for block in blocks:
            n = self._pins[block] - 1
            if n:
                self._pins[block] = n
            else:
                del self._pins[block]

    # -- writes (after a chunk is prefilled) -------------------------------------------
    def holds(self, h: BlockHash) -> bool:
        """Committed or being written."""
        return h in self._by_hash

    def allocate(self, h: BlockHash) -> int | None:
        """A block to write the rows named `h` into, evicting the least recently used unpinned
        block when none is free; None when `h` is held already or every block is pinned or
        being written."""
        if h in self._by_hash:
            return None
        if self._free:
            block = self._free.pop()
        else:
            block = next((b for b in self._lru if b not in self._pins), None)
            if block is None:
                return None
            self._forget(block)
            self._evictions += 1
        self._by_hash[h] = block
        self._hash_of[block] = h
        self._writing.add(block)
        return block

    def commit(self, block: int) -> None:
        """Its rows are written: lookups find it from now on."""
        self._writing.remove(block)
        self._lru[block] = None

    def abort(self, block: int) -> None:
        """Its rows could not be written (the request failed): the block is free again."""
        self._writing.remove(block)
        self._forget(block)
        self._free.append(block)

    def _forget(self, block: int) -> None:
        del self._by_hash[self._hash_of.pop(block)]
        self._lru.pop(block, None)

    # -- observation -------------------------------------------------------------------
    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            num_blocks=self.num_blocks, block_positions=self.block_positions, block_bytes=self.block_bytes,
            blocks_used=len(self._hash_of), lookups=self._lookups, hits=self._hits,
            hit_positions=self._hit_positions, evictions=self._evictions, query_positions=self._query_positions)
