"""The prep thread and context audio (server/engine/prep.py), with a stand-in Mimi: a bomb is
refused before it is decoded whole, a request's clips together stop at the audio a slot holds,
jobs without audio never wait behind another's, and a decoder's own failure ends one request,
never the thread."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from csm_core.constants import FRAME_SAMPLES, NUM_CODEBOOKS, SAMPLE_RATE
from csm_core.text import load_tokenizer
from server.audio_encoding import FFmpegEncoder
from server.engine import prep
from server.engine.messages import Prepared, PrepFailed, PrepJob
from server.engine.prep import PrepWorker, _Work
from server.engine.types import ContextSegment, EncodedAudio, EngineLimits, OutputEncoding, SynthesisParams

LIMITS = EngineLimits(max_slots=4, max_queue=16, max_seq_len=512, max_text_chars=200, max_context_segments=4,
                      max_speaker_id=3, max_audio_ms=20_000, default_max_audio_ms=8_000, max_context_audio_s=30.0,
                      max_request_id_chars=128)  # a slot holds 512 * 80 ms = 41 s of audio


class StandInMimi:
    device = torch.device("cpu")

    def __init__(self):
        self.waves: list[int] = []  # samples of every wave it encoded

    def encode(self, waves):
        self.waves += [len(w) for w in waves]
        return [torch.zeros(NUM_CODEBOOKS, math.ceil(len(w) / FRAME_SAMPLES), dtype=torch.long) for w in waves]


def flac(seconds: float, rate: int = 16_000) -> EncodedAudio:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), np.float32), rate, format="FLAC", subtype="PCM_16")
    return EncodedAudio(buffer.getvalue())


@pytest.fixture()
def worker():
    reports, mimi = [], StandInMimi()
    worker = PrepWorker(load_tokenizer("offline"), mimi, LIMITS, reports.append)
    yield worker, reports, mimi
    worker.close()


def job(i: int, *clips: EncodedAudio) -> _Work:
    context = tuple(ContextSegment(0, f"Clip {k}.", audio) for k, audio in enumerate(clips))
    return _Work(PrepJob(i, SynthesisParams(text="Hello.", context=context), max_frames=10))


def test_a_bomb_is_refused_and_a_plain_job_beside_it_goes_first(worker):
    worker, reports, mimi = worker
    worker._prepare([job(1, flac(3600)), job(2), job(3, flac(2.0))])
    assert [type(r) for r in reports] == [Prepared, PrepFailed, Prepared]
    assert [r.id for r in reports] == [2, 1, 3]  # the job without audio first
    (violation,) = reports[1].violations
    assert violation.field == "context[0].audio"
    assert violation.description == "3600.0 s is longer than the 30 s accepted"
    assert mimi.waves == [2 * SAMPLE_RATE]  # only the good clip was encoded


def test_a_requests_clips_together_stop_at_what_a_slot_holds(worker):
    worker, reports, mimi = worker
    worker._prepare([job(1, flac(25.0), flac(25.0), flac(5.0))])
    (failed,) = reports
    assert [v.field for v in failed.violations] == ["context[1].audio"]  # 25 + 25 s > 41 s; 25 + 5 s fit
    assert "take more than the 41.0 s of audio a request can hold" in failed.violations[0].description
    assert mimi.waves == []


def test_a_decoder_failure_ends_its_request_not_the_thread(worker, monkeypatch):
    worker, reports, _ = worker

    def broken(*args, **kwargs):
        raise RuntimeError("decoder panicked")

    monkeypatch.setattr(prep, "decode_audio", broken)
    worker._prepare([job(1, flac(1.0)), job(2)])
    assert [type(r) for r in reports] == [Prepared, PrepFailed]
    assert reports[1].error == "context[0].audio could not be decoded: decoder panicked"


def test_this_servers_own_flac_is_usable_context(worker):
    """The HTTP API's `flac` is written while streaming, without its length: as context it once
    raised a ValueError out of the prep thread (every later request then waited forever)."""
    worker, reports, mimi = worker
    encoder = FFmpegEncoder(OutputEncoding.FLAC, SAMPLE_RATE)
    pcm = (0.3 * np.sin(np.arange(SAMPLE_RATE * 2) / 7.0)).astype(np.float32)
    data = b"".join(encoder.encode(pcm[i:i + FRAME_SAMPLES]) for i in range(0, len(pcm), FRAME_SAMPLES))
    worker._prepare([job(1, EncodedAudio(data + encoder.flush()))])
    assert [type(r) for r in reports] == [Prepared] and mimi.waves == [2 * SAMPLE_RATE]
