"""The prefix cache on the tiny preset (CPU, fp32, exact mode): a seeded request gives the same
frames with the cache cold, warm and off, alone and among other streams, whatever its prompt
length relative to the prefill chunks; repeated inline context hits the same blocks."""

import threading
import time

import numpy as np
import pytest
import torch

from server.engine.config import EngineConfig
from server.engine.kv_blocks import KVBlockPool
from server.engine.parts import load_parts
from server.engine.types import ContextSegment, Finished, FinishReason, SynthesisParams

from engines import recording_engine

CHUNK = 32


def start(prefix_cache_mb: int):
    return recording_engine(EngineConfig(model="tiny", device="cpu", dtype="float32", max_slots=4, max_queue=16,
                                         watermark=False, prefill_budget=64, prefill_chunk=CHUNK,
                                         prefix_cache_mb=prefix_cache_mb))


@pytest.fixture(scope="module")
def cached():
    eng = start(prefix_cache_mb=2)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def uncached():
    eng = start(prefix_cache_mb=0)
    yield eng
    eng.shutdown()


def voice(frames: int, seed: int = 0) -> tuple[ContextSegment, ...]:
    codes = np.random.default_rng(seed).integers(0, 2048, (32, frames)).astype(np.int16)
    return (ContextSegment(speaker=0, text="This is how I sound.", codes=codes),)


def params(context, rid, seed=11, text="Hello there, how are you?", frames=6) -> SynthesisParams:
    return SynthesisParams(text=text, context=context, seed=seed, max_audio_ms=80 * frames, request_id=rid)


def frames_of(eng, p: SynthesisParams) -> tuple[torch.Tensor, Finished]:
    fin = None
    for ev in eng.submit(p):
        if isinstance(ev, Finished):
            fin = ev
    assert fin.reason in (FinishReason.EOS, FinishReason.LENGTH), fin
    return torch.stack(eng.frames[p.request_id]), fin


def others(eng, n: int, tag: str) -> list[threading.Thread]:
    """n streams of other prompts, running while the request under test is served."""
    def run(i):
        frames_of(eng, params(voice(40 + 7 * i, seed=100 + i), f"{tag}-other-{i}", seed=i, frames=12))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    return threads


@pytest.mark.parametrize("audio_frames", [60, 97])  # prompt ends mid-chunk / prefix covers a chunk of text too
def test_frames_are_identical_cold_warm_and_off_alone_and_among_others(cached, uncached, audio_frames):
    ctx = voice(audio_frames, seed=audio_frames)
    tag = f"v{audio_frames}"
    off, fin_off = frames_of(uncached, params(ctx, f"{tag}-off"))
    before = cached.stats().prefix_cache
    cold, fin_cold = frames_of(cached, params(ctx, f"{tag}-cold"))
    warm, _ = frames_of(cached, params(ctx, f"{tag}-warm"))
    after = cached.stats().prefix_cache
    whole_chunks = (fin_cold.prompt_frames - 1) // CHUNK
    assert after.hits - before.hits == 1 and after.hit_positions - before.hit_positions == whole_chunks * CHUNK
    threads = others(cached, 3, tag)
    busy, _ = frames_of(cached, params(ctx, f"{tag}-warm-busy"))
    for t in threads:
        t.join()
    assert torch.equal(cold, off) and torch.equal(warm, off) and torch.equal(busy, off)
    assert fin_cold.prompt_frames == fin_off.prompt_frames


def test_a_longer_prompt_sharing_the_voice_reuses_its_blocks_exactly(cached, uncached):
    ctx = voice(80, seed=3)
    frames_of(cached, params(ctx, "share-first", text="A first line."))
    before = cached.stats().prefix_cache
    p = params(ctx + (ContextSegment(speaker=1, text="And an inline turn after the voice."),), "share-second",
               text="A different line, longer than the first one.")
    got, _ = frames_of(cached, p)
    assert cached.stats().prefix_cache.hit_positions > before.hit_positions
    want, _ = frames_of(uncached, p)
    assert torch.equal(got, want)


def test_repeated_inline_context_audio_hits_the_cache(cached, uncached):
    """Inline audio is Mimi-encoded each time; the cache keys on the encoded frames, so a
    repeat hits when its codes come out the same (they do when it is encoded alone)."""
    wave = (0.1 * np.random.default_rng(9).standard_normal(24_000 * 3)).astype(np.float32)
    ctx = (ContextSegment(speaker=1, text="An inline recording.", audio=wave),)
    first, _ = frames_of(cached, params(ctx, "inline-1"))
    before = cached.stats().prefix_cache
    second, _ = frames_of(cached, params(ctx, "inline-2"))
    assert cached.stats().prefix_cache.hits == before.hits + 1
    assert torch.equal(first, second)
    assert torch.equal(second, frames_of(uncached, params(ctx, "inline-off"))[0])


def test_eviction_under_a_small_budget_keeps_results_exact(uncached):
    config = EngineConfig(model="tiny", device="cpu", dtype="float32", max_slots=2, watermark=False,
                          prefill_budget=64, prefill_chunk=CHUNK, prefix_cache_mb=1)
    parts = load_parts(config)
    runner = parts.runner
    runner.kv_blocks = KVBlockPool(runner.model, 8 * runner.kv_blocks.block_bytes, CHUNK)  # 8 blocks
    small = recording_engine(config, parts=parts)
    try:
        voices = [voice(150, seed=50 + i) for i in range(3)]  # 5 blocks each: they evict each other
        for round_ in range(2):
            for i, ctx in enumerate(voices):
                got, _ = frames_of(small, params(ctx, f"evict-{round_}-{i}"))
                if round_ == 1:
                    assert torch.equal(got, frames_of(uncached, params(ctx, f"evict-off-{i}"))[0])
        stats = small.stats().prefix_cache
        assert stats.evictions > 0 and stats.blocks_used <= 8
    finally:
        small.shutdown()
