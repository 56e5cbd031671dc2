"""Streamed and unary synthesis over loopback gRPC: every output format decodes to the length the
result reports, chunks are numbered without gaps, and the final message matches the stream."""

from __future__ import annotations

import asyncio
import io
import wave

import numpy as np
import pytest
import soundfile as sf
from decoders import OPUS_DECODE_RATE, OPUS_FRAME_SAMPLES, ffmpeg_decode, opusinfo

from csm_client import AsyncSpeechClient, ContextTurn, SpeechClient
from csm_client import csm_say
from csm_wire import speech_pb2 as pb
from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE

from .conftest import start_tiny_engine
from .harness import LoopbackServer

MAX_AUDIO_MS = 800  # 10 frames: short streams keep the suite fast on CPU
SEED = 1234


def stream(client: SpeechClient, **options) -> tuple[list[pb.AudioChunk], pb.SynthesisResult]:
    call = client.stream("Hello from the loopback test.", seed=SEED, max_audio_ms=MAX_AUDIO_MS, timeout=120,
                         **options)
    chunks = list(call)
    assert call.result is not None, "the stream ended without its result message"
    return chunks, call.result


def check_stream(chunks: list[pb.AudioChunk], result: pb.SynthesisResult, rate: int) -> None:
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    position = 0
    for c in chunks:
        assert c.start_sample == position and c.start_ms == pytest.approx(position * 1000 / rate)
        assert c.duration_ms == pytest.approx(c.num_samples * 1000 / rate)
        position += c.num_samples
    assert result.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
    assert 0 < result.frames <= MAX_AUDIO_MS // 80
    assert result.sample_rate == rate
    assert result.audio_samples == position == result.frames * FRAME_SAMPLES * rate // SAMPLE_RATE
    assert result.audio_ms == pytest.approx(result.frames * 80.0)
    assert 0 < result.time_to_first_audio_ms <= result.total_ms
    assert result.request_id


@pytest.mark.parametrize(("encoding", "rate"), [
    ("wav", 24_000), ("wav", 16_000), ("pcm_s16le", 24_000), ("pcm_f32le", 48_000),
    ("opus", 24_000), ("opus", 48_000)])
def test_streamed_audio_decodes_to_the_reported_length(client, encoding, rate):
    chunks, result = stream(client, encoding=encoding, sample_rate=rate)
    check_stream(chunks, result, rate)
    data = b"".join(c.data for c in chunks)
    if encoding == "wav":
        audio, wav_rate = sf.read(io.BytesIO(data), dtype="float32")
        assert wav_rate == rate and len(audio) == result.audio_samples
    elif encoding == "pcm_s16le":
        assert len(data) == 2 * result.audio_samples
    elif encoding == "pcm_f32le":
        audio = np.frombuffer(data, "<f4")
        assert len(audio) == result.audio_samples and np.all(np.abs(audio) <= 1.0)
    else:
        assert chunks[0].data.startswith(b"OggS")
        opusinfo(data)
        decoded = ffmpeg_decode(data, "opus")  # libopus honours pre-skip and the last page's granule
        expected = result.audio_samples * OPUS_DECODE_RATE // rate
        assert abs(len(decoded) - expected) <= OPUS_FRAME_SAMPLES


def test_unary_wav_has_exact_sizes(client):
    response = client.synthesize("A whole file at once.", seed=SEED, max_audio_ms=MAX_AUDIO_MS, timeout=120)
    with wave.open(io.BytesIO(response.audio)) as w:
        assert w.getframerate() == SAMPLE_RATE
        assert w.getnframes() == response.result.audio_samples == response.result.frames * FRAME_SAMPLES


def test_seeded_requests_repeat_through_sync_and_async_clients(server, client):
    options = dict(seed=SEED, max_audio_ms=MAX_AUDIO_MS, encoding="pcm_f32le", timeout=120)
    sync_audio = b"".join(c.data for c in client.stream("Same seed, same audio.", **options))

    async def run() -> bytes:
        async with AsyncSpeechClient(server.target) as aclient:
            call = aclient.stream("Same seed, same audio.", **options)
            data = b"".join([c.data async for c in call])
            assert call.result is not None
            return data

    # The frames are identical (tests/test_engine.py checks codes exactly); Mimi may decode them
    # one or several per call depending on load, which moves float32 samples by rounding only.
    async_audio = np.frombuffer(asyncio.run(run()), "<f4")
    np.testing.assert_allclose(async_audio, np.frombuffer(sync_audio, "<f4"), atol=1e-4, rtol=0)


def test_context_audio_is_accepted(client, tmp_path):
    path = tmp_path / "turn.wav"
    sf.write(path, 0.3 * np.sin(np.arange(16_000) / 5.0), 16_000, subtype="PCM_16")
    turn = ContextTurn.from_file(path, "An earlier turn.", speaker=1)
    chunks, result = stream(client, context=[turn], encoding="wav")
    check_stream(chunks, result, SAMPLE_RATE)
    _, alone = stream(client, encoding="wav")
    # One second of context audio is 12.5 frames (plus its end frame and transcript) of prompt.
    assert result.prompt_frames >= alone.prompt_frames + 13


def test_csm_say_writes_a_finished_wav(server, tmp_path, capsys):
    out = tmp_path / "say.wav"
    code = csm_say.main(["Hello from csm-say.", "-o", str(out), "--server", server.target,
                         "--seed", str(SEED), "--max-audio-ms", str(MAX_AUDIO_MS)])
    assert code == 0
    with wave.open(str(out)) as w:
        frames = w.getnframes()
    assert frames > 0 and frames % FRAME_SAMPLES == 0
    err = capsys.readouterr().err
    assert "first audio after" in err
    assert err.count("has random weights: its audio is noise, not speech") == 1


def test_csm_say_streams_opus_with_context(server, tmp_path):
    context = tmp_path / "ctx.wav"
    sf.write(context, 0.3 * np.sin(np.arange(24_000) / 7.0), 24_000)
    out = tmp_path / "say.opus"
    code = csm_say.main(["The reply.", "-o", str(out), "--server", server.target, "--seed", str(SEED),
                         "--max-audio-ms", str(MAX_AUDIO_MS), "--speaker", "1", "-q",
                         "--context", str(context), "--context-text", "The question.", "--context-speaker", "0"])
    assert code == 0
    data = out.read_bytes()
    opusinfo(data)
    assert len(ffmpeg_decode(data, "opus")) > 0


def test_csm_say_explains_a_refused_request_and_leaves_no_file(server, model_info, tmp_path, capsys):
    out = tmp_path / "refused.wav"
    code = csm_say.main(["Who am I?", "-o", str(out), "--server", server.target,
                         "--speaker", str(model_info.max_speaker_id + 1)])
    assert code == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "speaker:" in err


def test_watermarked_stream_keeps_its_chunk_accounting():
    engine = start_tiny_engine(watermark=True, max_slots=1)
    server = LoopbackServer(engine).start()
    try:
        with SpeechClient(server.target) as client:
            assert client.model_info(timeout=10).watermark_enabled
            chunks, result = stream(client, encoding="wav")
        check_stream(chunks, result, SAMPLE_RATE)
        assert result.watermarked
    finally:
        server.stop()
        engine.shutdown()
