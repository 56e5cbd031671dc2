"""Prefix cache bookkeeping (torch-free): chain hashes, lookups, LRU eviction, pins; and the
scheduler's use of it: cached positions cost no prefill budget, chunk boundaries stay aligned."""

import pytest

from server.engine.prefix_cache import PrefixIndex, chain_hashes
from server.engine.request import Request, RequestStatus
from server.engine.scheduler import Scheduler
from server.engine.types import SynthesisParams


def chunks(*names: str) -> tuple[bytes, ...]:
    return chain_hashes(n.encode() for n in names)


def test_chain_hashes_name_whole_prefixes():
    a, b = chunks("voice", "turn-1", "x"), chunks("voice", "turn-1", "y")
    assert a[:2] == b[:2] and a[2] != b[2]
    assert chunks("other", "turn-1")[1] != a[1]  # same chunk after another prefix: another name


def filled(index: PrefixIndex, hashes) -> list[int]:
    blocks = [index.allocate(h) for h in hashes]
    for b in blocks:
        index.commit(b)
    return blocks


def test_match_finds_the_longest_cached_prefix_and_counts():
    index = PrefixIndex(num_blocks=8, block_positions=4, block_bytes=100)
    voice = chunks("v0", "v1", "v2")
    blocks = filled(index, voice[:2])
    assert index.match(voice, max_blocks=3) == blocks  # v2 missing: stops there
    index.unpin(blocks)
    assert index.match(voice, max_blocks=1) == blocks[:1]  # never past the limit
    index.unpin(blocks[:1])
    assert index.match(chunks("w0"), max_blocks=1) == []
    s = index.stats()
    assert (s.lookups, s.hits, s.misses, s.hit_positions) == (3, 2, 1, 12)
    assert (s.blocks_used, s.bytes_used, s.capacity_bytes) == (2, 200, 800)


def test_a_block_being_written_is_not_found_and_not_allocated_twice():
    index = PrefixIndex(num_blocks=2, block_positions=4, block_bytes=1)
    (h,) = chunks("a")
    block = index.allocate(h)
    assert index.allocate(h) is None and index.holds(h)
    assert index.match((h,), 1) == []
    index.abort(block)
    assert not index.holds(h) and index.allocate(h) == block


def test_lru_eviction_skips_pinned_blocks_and_keeps_shared_roots():
    index = PrefixIndex(num_blocks=3, block_positions=4, block_bytes=1)
    a = chunks("root", "a1")
    b = chunks("root", "b1")
    root, a1 = filled(index, a)
    (b1,) = filled(index, b[1:])
    pinned = index.match(a, 2)  # touches a1 then root: root is the most recent
    index.unpin(pinned)
    assert index.match(b, 2) == [root, b1]  # b1 pinned, root most recent
    c = index.allocate(chunks("new")[0])  # the least recent unpinned block is a1
    assert c == a1 and index.stats().evictions == 1
    index.commit(c)
    assert index.allocate(chunks("newer")[0]) == c  # root and b1 are pinned: c is the only candidate
    index.unpin([root, b1])


def test_nothing_evictable_means_no_block():
    index = PrefixIndex(num_blocks=1, block_positions=4, block_bytes=1)
    (h,) = chunks("a")
    filled(index, (h,))
    pinned = index.match((h,), 1)
    assert index.allocate(chunks("b")[0]) is None
    index.unpin(pinned)
    assert index.allocate(chunks("b")[0]) == pinned[0]


# -- the scheduler with a prefix cache --------------------------------------------------
class FakeStream:
    def push(self, ev):
        pass


def req(rid, prompt_len, hashes=(), session=None, start=0):
    r = Request(id=rid, params=SynthesisParams(text="x"), sink=FakeStream(), seed=0, max_frames=10, t_arrival=0.0)
    r.prompt_len, r.block_hashes, r.session, r.num_prefilled = prompt_len, hashes, session, start
    return r


def test_cached_prefix_costs_no_budget_and_boundaries_stay_aligned():
    index = PrefixIndex(num_blocks=16, block_positions=8, block_bytes=1)
    s = Scheduler(num_slots=2, prefill_chunk=8, prefill_budget=16, idle_prefill_budget=64, prefix=index)
    hashes = chunks(*[f"c{i}" for i in range(5)])  # a 43-position prompt has 5 whole chunks
    cold = req("cold", 43, hashes)
    s.add(cold)
    plan = s.schedule()
    assert not plan.loads and [(c.start, c.end) for c in plan.prefill] == [(0, 8), (8, 16), (16, 24), (24, 32),
                                                                           (32, 40), (40, 43)]  # idle budget
    assert [(sv.chunk.start, sv.block) for sv in plan.saves] == [(0, 0), (8, 1), (16, 2), (24, 3), (32, 4)]
    for sv in plan.saves:
        index.commit(sv.block)
    cold.num_prefilled, cold.status = 43, RequestStatus.DECODING

    warm = req("warm", 43, hashes)
    s.add(warm)
    plan = s.schedule()  # a stream decodes: the normal budget of 16
    assert [(ld.request.id, ld.blocks) for ld in plan.loads] == [("warm", [0, 1, 2, 3, 4])]
    assert warm.num_prefilled == 40 and [(c.start, c.end) for c in plan.prefill] == [(40, 43)]
    assert not plan.saves and plan.decode == [cold]
    index.unpin(plan.loads[0].blocks)


def test_the_last_prompt_position_is_always_computed():
    index = PrefixIndex(num_blocks=4, block_positions=8, block_bytes=1)
    s = Scheduler(num_slots=1, prefill_chunk=8, prefill_budget=8, prefix=index)
    hashes = chunks("a", "b")
    filled(index, hashes)
    r = req("exact", 16, hashes)  # two whole chunks, both cached
    s.add(r)
    plan = s.schedule()
    assert plan.loads[0].blocks == [0] and [(c.start, c.end) for c in plan.prefill] == [(8, 16)]
    assert not plan.saves  # chunk b is held already


def test_without_hashes_nothing_is_looked_up_or_kept():
    index = PrefixIndex(num_blocks=4, block_positions=8, block_bytes=1)
    s = Scheduler(num_slots=1, prefill_chunk=8, prefill_budget=64, prefix=index)
    s.add(req("plain", 20))
    plan = s.schedule()
    assert not plan.loads and not plan.saves and index.stats().lookups == 0


def test_blocks_must_be_chunks():
    with pytest.raises(ValueError):
        Scheduler(num_slots=1, prefill_chunk=8, prefill_budget=8, prefix=PrefixIndex(2, 4, 1))
