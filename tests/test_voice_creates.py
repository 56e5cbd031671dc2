"""CreateVoice under hostile and careless clients, without a model: its audio decoded with a
bound (server/voices/wire.py), its own queue (server/voices/create_queue.py), --max-voices exact
under concurrent creates on one server, and names and stored numbers parsed strictly."""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import save as save_tensors

from csm_core.constants import FRAME_SAMPLES, NUM_CODEBOOKS, SAMPLE_RATE
from csm_core.text import load_tokenizer
from csm_wire import speech_pb2 as pb
from server.engine.types import EngineLimits, InvalidRequest, QueueFull
from server.voices.config import VoicesConfig
from server.voices.create_queue import CreateQueue
from server.voices.registry import Clip, NewSegment, VoiceLimits, VoiceRegistry
from server.voices.store import FORMAT, FORMAT_VERSION, SUFFIX, VoiceStore
from server.voices.types import VoiceQuotaExceeded, VoiceUnusable, valid_name
from server.voices.wire import decode_segments

TOKENIZER = load_tokenizer("offline")
ENGINE_LIMITS = EngineLimits(max_slots=4, max_queue=16, max_seq_len=512, max_text_chars=200,
                             max_context_segments=4, max_speaker_id=3, max_audio_ms=20_000,
                             default_max_audio_ms=8_000, max_context_audio_s=10.0, max_request_id_chars=128)


class SilentEncoder:
    """Codes of the right shape for each clip; `delay_s` stands for Mimi's time."""

    codec = "stand-in:1"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def encode(self, clips):
        time.sleep(self.delay_s)
        return [np.zeros((NUM_CODEBOOKS, math.ceil(len(c.samples) * SAMPLE_RATE / c.sample_rate / FRAME_SAMPLES)),
                         np.int16) for c in clips]


def registry(directory, encoder=None, **config) -> VoiceRegistry:
    cfg = VoicesConfig(directory=str(directory), **config)
    return VoiceRegistry(VoiceStore(cfg.path), VoiceLimits.for_engine(ENGINE_LIMITS, cfg),
                         encoder or SilentEncoder(), TOKENIZER)


def flac(seconds: float, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), np.float32), rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def segment(audio: bytes, text: str = "Words.") -> pb.Segment:
    return pb.Segment(text=text, audio=pb.AudioInput(data=audio))


def violations(call) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as refused:
        call()
    return {v.field: v.description for v in refused.value.violations}


def test_a_bomb_segment_is_refused_with_its_field_and_the_limit(tmp_path):
    limits = registry(tmp_path).limits  # clips of at most 10 s; a voice holds (512 - 64 - 100) * 80 ms = 27.8 s
    got = violations(lambda: decode_segments([segment(flac(1.0)), segment(flac(3600.0))], limits))
    assert got == {"segments[1].audio": "3600.0 s is longer than the 10 s accepted"}


def test_a_voices_segments_together_stop_at_what_a_voice_holds(tmp_path):
    limits = registry(tmp_path).limits
    clips = [segment(flac(s)) for s in (9.0, 9.0, 9.9, 0.5)]
    got = violations(lambda: decode_segments(clips, limits))
    assert got == {"segments": "the segments' audio passes the 27.8 s a voice can hold and leave room to speak: "
                               "use less or shorter audio"}  # at the third clip (9 + 9 + 9.9 s); 9 + 9 + 0.5 s fit


def test_too_many_segments_are_refused_before_any_is_decoded(tmp_path, monkeypatch):
    decoded = []
    monkeypatch.setattr("server.voices.wire.decode_audio", lambda *a, **k: decoded.append(a))
    n = ENGINE_LIMITS.max_context_segments + 1
    got = violations(lambda: decode_segments([segment(flac(0.1))] * n, registry(tmp_path).limits))
    assert got == {"segments": f"{n} segments; at most {ENGINE_LIMITS.max_context_segments}"} and decoded == []


def test_the_create_queue_refuses_past_its_bound_with_a_retry_delay():
    """Two admitted (one running, one waiting); the third is refused at once; a waiting caller
    that goes away leaves the queue; every admission is released however its creation ends."""
    queue = CreateQueue(max_pending=2)
    gate, started = threading.Event(), threading.Event()

    def slow(result):
        started.set()
        gate.wait(10)
        if result == "fail":
            raise ValueError("bad audio")
        return result

    async def scenario():
        running = asyncio.ensure_future(queue.run(slow, "first"))
        await asyncio.to_thread(started.wait, 10)
        waiting = asyncio.ensure_future(queue.run(slow, "second"))
        await asyncio.sleep(0)
        assert queue.pending == 2
        with pytest.raises(QueueFull) as refused:
            await queue.run(slow, "third")
        assert refused.value.retry_after_s >= 1.0 and "retry in about" in str(refused.value)
        waiting.cancel()  # its caller went away before it ran
        await asyncio.sleep(0.05)
        assert queue.pending == 1
        failing = asyncio.ensure_future(queue.run(slow, "fail"))
        gate.set()
        assert await running == "first"
        with pytest.raises(ValueError):
            await failing
        assert queue.pending == 0
        assert await queue.run(lambda: "again") == "again"

    asyncio.run(scenario())


def test_the_retry_delay_follows_the_measured_creations():
    """Refused with the time the admitted creations will take: the first guess (1 s each) before
    any was measured, then their running mean (never under 1 s)."""
    queue = CreateQueue(max_pending=3)

    async def refused_when_full() -> float:
        hold = threading.Event()
        tasks = [asyncio.ensure_future(queue.run(hold.wait, 10)) for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as refused:
            await queue.run(time.sleep, 0)
        hold.set()
        await asyncio.gather(*tasks)
        return refused.value.retry_after_s

    assert asyncio.run(refused_when_full()) == pytest.approx(3.0, abs=0.1)  # 3 x FIRST_GUESS_S
    for _ in range(10):
        asyncio.run(queue.run(time.sleep, 0.01))
    assert asyncio.run(refused_when_full()) == 1.0  # 3 x ~0.03 s measured: the 1 s floor


def create_at_once(reg: VoiceRegistry, names: list[str]) -> dict[str, str]:
    """Every create started together from its own thread; name -> "created" or the quota refused."""
    start, outcome = threading.Barrier(len(names)), {}

    def create(name: str) -> None:
        start.wait()
        try:
            reg.create(name, [NewSegment(0, "Words.", Clip(np.zeros(16_000, np.float32), 16_000))])
            outcome[name] = "created"
        except VoiceQuotaExceeded as e:
            outcome[name] = e.subject

    threads = [threading.Thread(target=create, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcome


@pytest.mark.parametrize("limit", ["voices", "bytes"])
def test_max_voices_and_bytes_are_exact_under_concurrent_creates(tmp_path, limit):
    """Eight creates at once, each past the early count while the others encode (0.2 s): the
    count and the publish are one step, so exactly the limit is stored."""
    size = registry(tmp_path / "probe").create("probe", [NewSegment(0, "Words.", Clip(
        np.zeros(16_000, np.float32), 16_000))]).size_bytes
    config = {"max_voices": 3} if limit == "voices" else {"max_bytes": 3 * size + size // 2}
    reg = registry(tmp_path / "voices", SilentEncoder(delay_s=0.2), **config)
    outcome = create_at_once(reg, [f"v{i}" for i in range(8)])
    print(f"\n8 concurrent creates at a limit of 3 ({limit}): {sorted(outcome.values())}; "
          f"{reg.usage().voices} stored")
    assert sorted(outcome.values()) == sorted(["created"] * 3 + [limit] * 5)
    assert reg.usage().voices == 3


@pytest.mark.parametrize("name", ["١٢٣", "voice٣", "v\u0663", "ｖoice", "\u0130", "a\n", "k\u212a"])
def test_names_take_ascii_letters_and_digits_only(tmp_path, name):
    """Arabic-Indic and other digits are digits to \\d and int(); a name takes ASCII alone."""
    assert not valid_name(name)
    with pytest.raises(InvalidRequest) as refused:
        registry(tmp_path).create(name, [NewSegment(0, "Words.", Clip(np.zeros(1600, np.float32), 16_000))])
    assert [v.field for v in refused.value.violations] == ["name"]


@pytest.mark.parametrize(("field", "value"), [("speaker", "٣"), ("speaker", 1.7), ("speaker", True),
                                               ("prompt_frames", "13")])
def test_a_stored_voice_takes_json_integers_only(tmp_path, field, value):
    """A file written by anything else (or damaged) is unusable, not read with int(), which takes
    "٣" as 3 and 1.7 as 1."""
    voice = registry(tmp_path).create("kept", [NewSegment(1, "Words.", Clip(np.zeros(16_000, np.float32), 16_000))])
    segment = {"speaker": 1, "text": "Words.", "prompt_frames": voice.segments[0].prompt_frames, field: value}
    manifest = {"name": "kept", "description": "", "created_at": voice.created_at, "codec": voice.codec,
                "content_hash": voice.content_hash, "segments": [segment]}
    path = tmp_path / f"kept{SUFFIX}"
    path.unlink()
    path.write_bytes(save_tensors({"segments.0.codes": np.asarray(voice.segments[0].codes)}, metadata={
        "format": FORMAT, "version": FORMAT_VERSION, "voice": json.dumps(manifest)}))
    with pytest.raises(VoiceUnusable, match="is not an integer"):
        VoiceStore(tmp_path).read("kept")
