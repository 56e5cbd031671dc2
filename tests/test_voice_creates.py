"""CreateVoice under hostile and careless clients, without a model: its audio decoded with a
bound (server/voices/wire.py), its own queue (server/voices/create_queue.py), --max-voices exact
under concurrent creates on one server, and names and stored numbers parsed strictly."""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
import soundfile as sf

from csm_core.constants import FRAME_SAMPLES, NUM_CODEBOOKS, SAMPLE_RATE
from csm_core.text import load_tokenizer
from csm_wire import speech_pb2 as pb
from server.engine.types import EngineLimits, InvalidRequest
from server.voices.config import VoicesConfig
from server.voices.registry import VoiceLimits, VoiceRegistry
from server.voices.store import VoiceStore
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
    assert list(got) == ["segments[2].audio"]  # 9 + 9 + 9.9 s > 27.8 s; 9 + 9 + 0.5 s fit
    assert "take more than the 27.8 s of audio a voice (leaving room to speak) can hold" in got["segments[2].audio"]


def test_too_many_segments_are_refused_before_any_is_decoded(tmp_path, monkeypatch):
    decoded = []
    monkeypatch.setattr("server.voices.wire.decode_audio", lambda *a, **k: decoded.append(a))
    n = ENGINE_LIMITS.max_context_segments + 1
    got = violations(lambda: decode_segments([segment(flac(0.1))] * n, registry(tmp_path).limits))
    assert got == {"segments": f"{n} segments; at most {ENGINE_LIMITS.max_context_segments}"} and decoded == []
