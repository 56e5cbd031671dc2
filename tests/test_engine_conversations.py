"""Conversations in the engine on the tiny preset (CPU, fp32, exact mode): a turn prefills only
what its slot lacks, the first turn equals Synthesize with the same context, a conversation is
batch-invariant, idle and reclaimed slots re-prefill from codes, the window drops whole old
turns and a turn never fails because the conversation grew, interrupts keep what was heard."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from server.engine.config import EngineConfig
from server.engine.types import (
    AudioOut, ContextSegment, EncodedAudio, Finished, FinishReason, InvalidRequest, SynthesisParams,
)

from engines import recording_engine

CHUNK = 32


def start(**overrides):
    config = dict(model="tiny", device="cpu", dtype="float32", max_slots=4, max_queue=16, watermark=False,
                  prefill_budget=64, prefill_chunk=CHUNK, conversation_idle_s=0)
    eng = recording_engine(EngineConfig(**{**config, **overrides}))
    eng.prefilled = []  # prompt positions prefilled per step, from here on (tests take differences)
    eng.add_step_observer(lambda st: eng.prefilled.append(st.prefill_tokens))
    return eng


@pytest.fixture(scope="module")
def engine():
    eng = start()
    yield eng
    eng.shutdown()


VOICE = (ContextSegment(speaker=0, text="This is how I sound.",
                        codes=np.random.default_rng(0).integers(0, 2048, (32, 70)).astype(np.int16)),)


def user_turn(seconds: float, seed: int, text: str = "And what do you think about that?") -> ContextSegment:
    wave = (0.1 * np.random.default_rng(seed).standard_normal(int(24_000 * seconds))).astype(np.float32)
    return ContextSegment(speaker=1, text=text, audio=wave)


def finish(stream) -> Finished:
    for ev in stream:
        if isinstance(ev, Finished):
            return ev


def speak(eng, conv, turn_id, text="I think it is a fine idea.", seed=1, frames=6, **kw) -> Finished:
    fin = finish(conv.speak(turn_id, SynthesisParams(text=text, seed=seed, max_audio_ms=80 * frames,
                                                     request_id=turn_id, **kw)))
    assert fin.reason in (FinishReason.EOS, FinishReason.LENGTH), fin
    return fin


def got(eng, label) -> torch.Tensor:
    return torch.stack(eng.frames[label])


def open_with_voice(eng, label):
    conv = eng.open_conversation(label)
    assert finish(conv.add_voice(VOICE)).context.turns == 0
    return conv


def kv_after(fin: Finished) -> int:
    """Rows the slot holds after a piece: its prompt and the frames fed back through the model."""
    return fin.prompt_frames + (fin.frames if fin.reason is FinishReason.EOS else fin.frames - 1)


def test_first_turn_equals_synthesize_and_later_turns_prefill_only_what_is_new(engine):
    conv = open_with_voice(engine, "c-first")
    user = user_turn(1.0, seed=1)
    update = finish(conv.add_context("u1", (user,))).context
    assert update.turns == 1 and update.positions > 0
    first = speak(engine, conv, "c-first-t1", seed=5)
    one_shot = SynthesisParams(text="I think it is a fine idea.", context=VOICE + (user,), seed=5, max_audio_ms=480,
                               request_id="c-first-synth")
    synth = finish(engine.submit(one_shot))
    assert torch.equal(got(engine, "c-first-t1"), got(engine, "c-first-synth"))  # same prompt, same boundaries
    assert first.prompt_frames == synth.prompt_frames

    steps = len(engine.prefilled)
    second = speak(engine, conv, "c-first-t2", text="And a second line.", seed=6)
    new = second.prompt_frames - kv_after(first)  # the end of turn 1 and turn 2's text
    text = len(engine.parts.tokenizer.encode_turn(0, "And a second line."))
    assert sum(engine.prefilled[steps:]) == new <= text + 2
    assert second.context.turns == 3 and second.context.positions == second.prompt_frames + second.frames + 1
    conv.close()


def conversation(eng, tag: str) -> list[torch.Tensor]:
    conv = open_with_voice(eng, tag)
    out = []
    for i in range(3):
        finish(conv.add_context(f"{tag}-u{i}", (user_turn(0.5, seed=10 + i),)))
        speak(eng, conv, f"{tag}-t{i}", text=f"Reply number {i}, spoken.", seed=20 + i)
        out.append(got(eng, f"{tag}-t{i}"))
    conv.close()
    return out


def test_a_conversation_gives_the_same_frames_alone_and_among_other_streams(engine):
    alone = conversation(engine, "inv-alone")
    stop = threading.Event()

    def noise(i):
        n = 0
        while not stop.is_set():
            finish(engine.submit(SynthesisParams(text=f"Background {i}.", seed=i, max_audio_ms=80 * (5 + i + n % 3),
                                                 request_id=f"bg-{i}-{n}")))
            n += 1

    threads = [threading.Thread(target=noise, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    busy = conversation(engine, "inv-busy")
    stop.set()
    for t in threads:
        t.join()
    for a, b in zip(alone, busy):
        assert torch.equal(a, b)


def test_the_window_drops_whole_old_turns_and_no_turn_fails(engine):
    limits = engine.info().limits  # tiny: 512 positions
    conv = open_with_voice(engine, "window")
    voice_positions = finish(conv.add_context("w-u0", (user_turn(2.0, seed=30),))).context.positions
    dropped: list[str] = []
    for i in range(8):
        fin = speak(engine, conv, f"w-t{i}", text=f"Turn {i} of a long talk.", seed=i, frames=12)
        dropped += fin.context.dropped
        ctx = finish(conv.add_context(f"w-u{i + 1}", (user_turn(2.0, seed=31 + i),))).context
        dropped += ctx.dropped
        assert ctx.positions <= limits.max_seq_len
    assert dropped and dropped[0] == "w-u0" and len(dropped) == len(set(dropped))
    assert voice_positions > 0 and ctx.turns < 17
    conv.close()


def test_interrupt_keeps_what_was_heard(engine):
    conv = open_with_voice(engine, "barge")
    before = finish(conv.add_context("b-u", (user_turn(0.5, seed=40),))).context.positions
    stream = conv.speak("b-t", SynthesisParams(text="A long answer that the listener will cut short.", seed=2,
                                               max_audio_ms=80 * 200, request_id="b-t"))
    heard = 0
    for ev in stream:
        if isinstance(ev, AudioOut):
            heard += ev.frames
            if heard >= 4:
                ack = finish(conv.interrupt("b-t", heard_ms=2 * 80))
        else:
            end = ev
    assert end.reason is FinishReason.CANCELLED
    text = end.prompt_frames - before
    assert ack.context.positions == before + text + 2 + 1  # the turn's text, 2 heard frames, end-of-audio
    after = speak(engine, conv, "b-next", seed=3)  # the conversation goes on from there
    assert after.prompt_frames > ack.context.positions
    conv.close()


def test_bad_turns_fail_alone_and_close_frees_the_slot(engine):
    conv = open_with_voice(engine, "bad")
    with pytest.raises(InvalidRequest) as exc:
        conv.speak("bad-1", SynthesisParams(text="x", speaker=99))
    assert [v.field for v in exc.value.violations] == ["speaker"]
    broken = ContextSegment(speaker=1, text="Garbled.", audio=EncodedAudio(b"not audio at all", "wav"))
    fin = finish(conv.add_context("bad-2", (broken,)))
    assert fin.reason is FinishReason.INVALID and fin.violations[0].field == "context[0].audio"
    speak(engine, conv, "bad-3", seed=4)
    stream = conv.speak("bad-4", SynthesisParams(text="Cut off by the caller leaving.", seed=5, max_audio_ms=80 * 200))
    for ev in stream:
        if isinstance(ev, AudioOut):
            steps = len(engine.prefilled)
            conv.close()
            break
    deadline = time.time() + 5
    while engine.stats().conversations and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats().conversations == 0 and engine.stats().slots_in_use == 0
    assert len(engine.prefilled) - steps <= 2  # the step in flight, then the slot is free


def test_idle_and_reclaimed_slots_reprefill_from_codes():
    eng = start(max_slots=1, conversation_idle_s=0.3, prefix_cache_mb=1)
    encoded = []
    encode = eng.parts.codec.encode
    eng.parts.codec.encode = lambda waves: encoded.append(len(waves)) or encode(waves)
    try:
        conv = open_with_voice(eng, "idle")
        finish(conv.add_context("i-u", (user_turn(1.0, seed=50),)))
        first = speak(eng, conv, "i-t1", seed=1)
        assert eng.stats().conversations_holding_slots == 1
        deadline = time.time() + 5
        while eng.stats().conversations_holding_slots and time.time() < deadline:
            time.sleep(0.05)
        assert eng.stats().conversations_holding_slots == 0 and eng.stats().slots_in_use == 0
        calls = len(encoded)
        steps = len(eng.prefilled)
        hits = eng.stats().prefix_cache.hit_positions
        second = speak(eng, conv, "i-t2", seed=2)
        reprefilled = sum(eng.prefilled[steps:])
        copied = eng.stats().prefix_cache.hit_positions - hits
        assert reprefilled + copied == second.prompt_frames and copied > 0  # the whole context again
        assert len(encoded) == calls  # from codes: nothing encoded again

        finish(eng.submit(SynthesisParams(text="A one-shot takes the held slot.", seed=9, max_audio_ms=240)))
        third = speak(eng, conv, "i-t3", seed=3)  # queued for the slot, context prefilled again
        assert third.prompt_frames > second.prompt_frames and third.context.turns == 4
        conv.close()
    finally:
        eng.shutdown()
