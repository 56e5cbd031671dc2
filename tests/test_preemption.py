"""Preemption on the tiny preset (CPU, fp32, exact mode): a stream paused for its reader gives
its slot to a waiting request, its KV waits in host memory, and once its reader catches up it
resumes with the same frames and the same audio as a run that never stopped."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from server.engine.config import EngineConfig
from server.engine.types import AudioOut, ContextSegment, Finished, FinishReason, SynthesisParams

from engines import recording_engine

FRAMES = 30


@pytest.fixture(scope="module")
def engine():
    eng = recording_engine(EngineConfig(model="tiny", device="cpu", dtype="float32", max_slots=1, max_queue=4,
                                        watermark=False, stream_buffer_s=0.4, preempt_ahead_s=0.3,
                                        reader_stall_s=30.0))
    yield eng
    eng.shutdown()


def slow(rid: str) -> SynthesisParams:
    return SynthesisParams(text="I read slowly, then all at once.", seed=5, temperature=0.8,
                           max_audio_ms=80 * FRAMES, request_id=rid)


def read_all(stream) -> tuple[np.ndarray, Finished]:
    pcm, fin = [], None
    for event in stream:
        if isinstance(event, AudioOut):
            pcm.append(event.pcm)
        else:
            fin = event
    return (np.concatenate(pcm) if pcm else np.zeros(0, np.float32)), fin


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_preempted_stream_resumes_with_the_same_frames_and_audio(engine):
    alone_pcm, alone = read_all(engine.submit(slow("alone")))
    before = engine.stats()

    stream = engine.submit(slow("preempted"))
    first = stream.get(timeout=60)  # the stream is running; now its reader stops
    assert isinstance(first, AudioOut)
    wait_for(lambda: engine.stats().requests_paused == 1, what="the stream to pause")
    other = engine.submit(SynthesisParams(text="I only need a moment.", seed=1, max_audio_ms=480,
                                          request_id="other"))
    _, other_end = read_all(other)  # it runs in the one slot while the paused stream is preempted
    stats = engine.stats()
    assert other_end.reason in (FinishReason.EOS, FinishReason.LENGTH)
    assert stats.preemptions == before.preemptions + 1 and stats.requests_preempted == 1
    rest_pcm, end = read_all(stream)  # the reader catches up: it resumes
    pcm = np.concatenate([first.pcm, rest_pcm])

    after = engine.stats()
    assert after.resumes == before.resumes + 1 and after.requests_preempted == 0 and after.slots_in_use == 0
    assert end.reason is alone.reason and end.frames == alone.frames
    assert torch.equal(torch.stack(engine.frames["preempted"]), torch.stack(engine.frames["alone"]))
    assert pcm.shape == alone_pcm.shape and np.abs(pcm - alone_pcm).max() < 1e-5, np.abs(pcm - alone_pcm).max()


def test_a_preempted_stream_that_is_cancelled_frees_its_memory(engine):
    stream = engine.submit(slow("cancelled"))
    stream.get(timeout=60)
    wait_for(lambda: engine.stats().requests_paused == 1, what="the stream to pause")
    other = engine.submit(SynthesisParams(text="Me first.", seed=2, max_audio_ms=2000, request_id="blocker"))
    wait_for(lambda: engine.stats().requests_preempted == 1, what="the paused stream to be preempted")
    stream.cancel()
    wait_for(lambda: engine.stats().requests_preempted == 0, what="the preempted stream to end")
    assert engine._core.runner.swap.used_bytes == 0
    read_all(other)
    wait_for(lambda: engine.stats().slots_in_use == 0, what="the slot to be free")


VOICE = (ContextSegment(speaker=0, text="This is how I sound.",
                        codes=np.random.default_rng(0).integers(0, 2048, (32, 40)).astype(np.int16)),)


def turn(turn_id: str, seed: int) -> SynthesisParams:
    return SynthesisParams(text="I read slowly, then all at once.", seed=seed, temperature=0.8,
                           max_audio_ms=80 * FRAMES, request_id=turn_id)


def test_a_conversation_turn_is_preempted_and_its_conversation_goes_on_exactly(engine):
    """A paused turn gives its conversation's slot to a waiting request; resumed, it makes the same
    frames and audio, and the conversation's next turn (in the slot it resumed in) those of a
    conversation never preempted."""
    alone = engine.open_conversation("alone")
    read_all(alone.add_voice(VOICE))
    alone_pcm, alone_end = read_all(alone.speak("alone-1", turn("alone-1", 7)))
    _, alone_next = read_all(alone.speak("alone-2", turn("alone-2", 8)))
    alone.close()
    before = engine.stats()

    conv = engine.open_conversation("preempted")
    read_all(conv.add_voice(VOICE))
    stream = conv.speak("conv-1", turn("conv-1", 7))
    first = stream.get(timeout=60)
    assert isinstance(first, AudioOut)
    wait_for(lambda: engine.stats().requests_paused == 1, what="the turn to pause")
    _, other_end = read_all(engine.submit(SynthesisParams(text="I only need a moment.", seed=1, max_audio_ms=480,
                                                          request_id="other-of-conv")))
    assert other_end.reason in (FinishReason.EOS, FinishReason.LENGTH)
    assert engine.stats().preemptions == before.preemptions + 1
    rest_pcm, end = read_all(stream)
    _, after_next = read_all(conv.speak("conv-2", turn("conv-2", 8)))
    conv.close()

    pcm = np.concatenate([first.pcm, rest_pcm])
    assert engine.stats().resumes == before.resumes + 1
    assert end.reason is alone_end.reason and end.frames == alone_end.frames
    assert torch.equal(torch.stack(engine.frames["conv-1"]), torch.stack(engine.frames["alone-1"]))
    assert pcm.shape == alone_pcm.shape and np.abs(pcm - alone_pcm).max() < 1e-5
    assert after_next.prompt_frames == alone_next.prompt_frames  # it prefilled only what was new
    assert torch.equal(torch.stack(engine.frames["conv-2"]), torch.stack(engine.frames["alone-2"]))
    wait_for(lambda: engine.stats().slots_in_use == 0, what="the slot to be free")


def test_a_stream_whose_reader_leaves_audio_unread_for_the_grace_gives_its_slot_up_and_resumes_exactly():
    """The grace rule: audio waiting unread without a break for preempt_grace_s (the client's
    transport is full) is enough, long before preempt_ahead_s has piled up (here never: it is
    longer than the utterance). The stream resumes once its reader has taken all that waited,
    with the same frames and audio as a run that never stopped."""
    eng = recording_engine(EngineConfig(model="tiny", device="cpu", dtype="float32", max_slots=1, max_queue=4,
                                        watermark=False, stream_buffer_s=60.0, preempt_ahead_s=600.0,
                                        preempt_grace_s=0.3, reader_stall_s=0.0))
    try:
        params = lambda rid: SynthesisParams(text="I keep my reader waiting.", seed=9, temperature=0.8,  # noqa: E731
                                             max_audio_ms=80 * 150, request_id=rid)
        alone_pcm, alone = read_all(eng.submit(params("alone")))
        stream = eng.submit(params("blocked"))
        first = stream.get(timeout=60)  # then its reader stops for a while
        assert isinstance(first, AudioOut)
        wait_for(lambda: stream.unread_since is not None and time.monotonic() - stream.unread_since > 0.3,
                 what="audio to wait unread for the grace")
        assert stream.unread_ms < 600_000
        _, other_end = read_all(eng.submit(SynthesisParams(text="Me now.", seed=1, max_audio_ms=400,
                                                           request_id="other")))
        assert other_end.reason in (FinishReason.EOS, FinishReason.LENGTH)
        stats = eng.stats()
        assert stats.preemptions == 1 and stats.requests_preempted == 1  # it waits for its reader to take it all
        rest_pcm, end = read_all(stream)
        stats = eng.stats()
        assert stats.resumes == 1 and stats.requests_preempted == 0
        assert end.reason is alone.reason and end.frames == alone.frames
        assert torch.equal(torch.stack(eng.frames["blocked"]), torch.stack(eng.frames["alone"]))
        pcm = np.concatenate([first.pcm, rest_pcm])
        assert pcm.shape == alone_pcm.shape and np.abs(pcm - alone_pcm).max() < 1e-5
    finally:
        eng.shutdown()


def test_unread_since_marks_audio_that_waits_without_a_break():
    from server.engine.stream import RequestStream

    posted = []
    stream = RequestStream(1, "r", posted.append)
    assert stream.unread_since is None
    stream.push(AudioOut(pcm=np.zeros(1920, np.float32), frames=1, watermarked=False))
    since = stream.unread_since
    assert since is not None
    stream.push(AudioOut(pcm=np.zeros(1920, np.float32), frames=1, watermarked=False))
    stream.get()
    assert stream.unread_since == since  # some still waits: the same wait
    stream.get()
    assert stream.unread_since is None and stream.unread_ms == 0 and not posted
