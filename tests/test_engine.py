"""The continuous-batching engine on the tiny preset (CPU, fp32, exact mode)."""

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from csm_core.audio_io import resample
from csm_core.checkpoint import load_model
from csm_core.constants import MIMI_CODEBOOK_SIZE, SAMPLE_RATE
from csm_core.framing import Segment, build_prompt
from csm_core.generate import generate
from csm_core.sampling import SamplingParams
from server.engine.config import EngineConfig
from server.engine.types import AudioOut, ContextSegment, Finished, FinishReason, SynthesisParams

from engines import recording_engine


@pytest.fixture(scope="module")
def engine():
    eng = recording_engine(EngineConfig(model="tiny", device="cpu", dtype="float32", max_slots=4, max_queue=64,
                                        watermark=False, prefill_budget=64, prefill_chunk=32))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def reference(engine):
    model = load_model("tiny").model
    model.setup_caches(1)
    model.set_exact(True)
    return model


def wave(seconds, seed, rate=SAMPLE_RATE):
    g = np.random.default_rng(seed)
    return (0.1 * g.standard_normal(int(seconds * rate))).astype(np.float32)


def make_params(i):
    context = ()
    if i % 3 == 0:  # context audio on some, at different rates and lengths
        rate = [24000, 16000, 44100][i % 2]
        context = (ContextSegment(speaker=1, text=f"earlier turn {i}", audio=wave(0.5 + 0.25 * (i % 4), i, rate),
                                  sample_rate=rate),)
    return SynthesisParams(text="word " * (1 + i % 5) + str(i), speaker=i % 2, context=context, seed=1000 + i,
                           temperature=0.9, top_k=[50, 10, 1][i % 3], max_audio_ms=80 * (3 + i % 6),
                           request_id=f"req-{i}")


def reference_frames(engine, model, params):
    segs = []
    for seg in params.context:
        w = resample(torch.from_numpy(seg.audio), seg.sample_rate, SAMPLE_RATE)
        segs.append(Segment(seg.speaker, seg.text, engine.parts.codec.encode([w])[0]))
    prompt = build_prompt(engine.parts.tokenizer, segs, params.speaker, params.text)
    res = generate(model, prompt, max_frames=params.max_audio_ms // 80,
                   sampling=SamplingParams(params.temperature, params.top_k), seed=params.seed,
                   prefill_chunk=engine.config.prefill_chunk)
    return res.frames


def drain(stream):
    audio, last = [], None
    for ev in stream:
        if isinstance(ev, AudioOut):
            audio.append(ev.pcm)
        else:
            last = ev
    return np.concatenate(audio) if audio else np.zeros(0, np.float32), last


def solo_audio(engine, frames):
    """A stream's frames [n, 32] through a Mimi stream decoder of its own, in one call."""
    decoder = engine.parts.codec.stream_decoder(1)
    codes = frames.t().unsqueeze(0).clamp(max=MIMI_CODEBOOK_SIZE - 1)  # [1, 32, n]
    pcm = decoder.decode(codes, torch.tensor([True]))[0]
    decoder.close()
    return pcm.numpy()


def test_batch_invariance_16_staggered_requests(engine, reference):
    """More requests than slots, submitted at staggered times, each gives exactly the frames of
    the one-request reference path with the same seed, and the audio of those frames decoded
    alone: the shared Mimi state, its merged multi-frame calls (streams ending inside them)
    and slot reuse do not leak between streams."""
    params = [make_params(i) for i in range(16)]
    before = engine.counters()
    streams = []
    for i, p in enumerate(params):
        streams.append(engine.submit(p))
        time.sleep(0.05 * (i % 4))
    results = [drain(s) for s in streams]
    for p, (audio, fin) in zip(params, results):
        assert fin.reason in (FinishReason.LENGTH, FinishReason.EOS), fin
        got = torch.stack(engine.frames[p.request_id]) if engine.frames.get(p.request_id) else torch.zeros(0, 32)
        want = reference_frames(engine, reference, p)
        assert torch.equal(got.long(), want), p.request_id
        assert fin.frames == len(want) and len(audio) == 1920 * len(want)
        if len(want):  # batched vs single-row GEMMs: equal up to fp32 rounding (outputs are ~0.1)
            np.testing.assert_allclose(audio, solo_audio(engine, want), atol=1e-4, rtol=0, err_msg=p.request_id)
    after = engine.counters()
    assert after.mimi_frames - before.mimi_frames > after.mimi_calls - before.mimi_calls  # Mimi did merge steps


def test_cancel_mid_stream_frees_slot_within_a_step(engine, reference):
    steps = []
    engine.add_step_observer(lambda st: steps.append(st))
    p = SynthesisParams(text="a long one", seed=7, max_audio_ms=80 * 200, request_id="to-cancel")
    stream = engine.submit(p)
    got_audio = 0
    for ev in stream:
        if isinstance(ev, AudioOut):
            got_audio += 1
            if got_audio == 3:
                n_steps = len(steps)
                stream.cancel()
        else:
            fin = ev
            break
    assert fin.reason is FinishReason.CANCELLED
    assert len(steps) - n_steps <= 2  # the step in flight, then the slot is freed
    deadline = time.time() + 5
    while engine.stats().slots_in_use and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats().slots_in_use == 0
    # the slot is reused cleanly: a new request there matches the reference exactly
    q = replace(make_params(4), request_id="after-cancel")
    _, fin2 = drain(engine.submit(q))
    assert fin2.reason is FinishReason.LENGTH
    assert torch.equal(torch.stack(engine.frames["after-cancel"]).long(), reference_frames(engine, reference, q))


def test_fault_in_one_request_fails_only_that_request(engine, reference, monkeypatch):
    import server.engine.runner as runner_mod

    real = runner_mod.prefill_slot
    bad_len = []

    def faulty(model, slot, prompt, start, end):
        if len(prompt) in bad_len:
            raise RuntimeError("injected fault")
        return real(model, slot, prompt, start, end)

    monkeypatch.setattr(runner_mod, "prefill_slot", faulty)
    bad = SynthesisParams(text="this one breaks " * 7, seed=1, max_audio_ms=400, request_id="bad")
    bad_len.append(len(engine.parts.tokenizer.encode_turn(0, bad.text)))
    good = [replace(p, request_id="good-" + p.request_id) for p in map(make_params, (1, 2, 5))]
    streams = [engine.submit(good[0]), engine.submit(bad), engine.submit(good[1]), engine.submit(good[2])]
    results = [drain(s)[1] for s in streams]
    assert results[1].reason is FinishReason.ERROR and "injected fault" in results[1].error
    for g, fin in zip(good, [results[0], results[2], results[3]]):
        assert fin.reason is FinishReason.LENGTH
        assert torch.equal(torch.stack(engine.frames[g.request_id]).long(), reference_frames(engine, reference, g))
