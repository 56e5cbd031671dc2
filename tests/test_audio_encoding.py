"""Streaming output encoders: every format decodes to the audio that went in, piece by piece."""

import io
import struct
import wave

import numpy as np
import pytest
import soundfile as sf
import sphn

from csm_wire import wav
from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE
from server.audio_encoding import OPUS_PACKET_SAMPLES, OutputEncoding, make_encoder


def tone(n: int, rate: int, hz: float = 220.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


def encode_frames(encoding: OutputEncoding, rate: int, frames: int) -> tuple[list[bytes], bytes, np.ndarray]:
    """Pieces of one stream fed a CSM frame at a time, the flushed tail, and the PCM fed."""
    per_frame = FRAME_SAMPLES * rate // SAMPLE_RATE
    pcm = tone(per_frame * frames, rate)
    encoder = make_encoder(encoding, rate)
    pieces = [encoder.encode(pcm[i * per_frame:(i + 1) * per_frame]) for i in range(frames)]
    return pieces, encoder.flush(), pcm


def test_pcm_s16le_rounds_and_clips():
    encoder = make_encoder(OutputEncoding.PCM_S16LE, SAMPLE_RATE)
    data = encoder.encode(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], np.float32))
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]
    assert encoder.flush() == b""


def test_pcm_f32le_is_the_samples():
    pieces, tail, pcm = encode_frames(OutputEncoding.PCM_F32LE, 16_000, 3)
    assert tail == b""
    np.testing.assert_array_equal(np.frombuffer(b"".join(pieces), "<f4"), pcm)


@pytest.mark.parametrize("rate", [8_000, 24_000, 44_100, 48_000])
def test_streamed_wav_reads_back_and_finalizes_to_exact_sizes(rate):
    pieces, tail, pcm = encode_frames(OutputEncoding.WAV, rate, 4)
    assert pieces[0][:4] == b"RIFF" and struct.unpack("<I", pieces[0][40:44]) == (wav.UNKNOWN_SIZE,)
    assert all(not p.startswith(b"RIFF") for p in pieces[1:]) and tail == b""
    streamed = b"".join(pieces)
    decoded, got_rate = sf.read(io.BytesIO(streamed), dtype="float32")
    assert got_rate == rate and len(decoded) == len(pcm)
    np.testing.assert_allclose(decoded, pcm, atol=1 / 32767)

    exact = wav.finalize(streamed)
    with wave.open(io.BytesIO(exact)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (rate, 1, 2, len(pcm))
    assert struct.unpack("<I", exact[4:8]) == (len(exact) - 8,)


def test_wav_without_audio_is_an_empty_wav():
    encoder = make_encoder(OutputEncoding.WAV, SAMPLE_RATE)
    data = wav.finalize(encoder.flush())
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() == 0


@pytest.mark.parametrize("rate", [24_000, 48_000])
def test_opus_sends_every_frame_at_once_and_decodes_to_the_same_length(rate):
    pieces, tail, pcm = encode_frames(OutputEncoding.OGG_OPUS, rate, 5)
    assert all(pieces), "a whole CSM frame must leave the encoder at once"
    assert pieces[0].startswith(b"OggS") and b"OpusHead" in pieces[0]
    assert tail == b""
    decoded, decoded_rate = sphn.read_opus_bytes(b"".join(pieces))
    assert decoded.shape[-1] / decoded_rate == pytest.approx(len(pcm) / rate)


def test_opus_holds_back_a_partial_packet_and_pads_it_on_flush():
    rate = 24_000
    encoder = make_encoder(OutputEncoding.OGG_OPUS, rate)
    head = encoder.encode(tone(OPUS_PACKET_SAMPLES + 100, rate))
    held = encoder.encode(tone(100, rate))
    assert head and held == b""
    tail = encoder.flush()
    decoded, decoded_rate = sphn.read_opus_bytes(head + tail)
    assert decoded.shape[-1] / decoded_rate == pytest.approx(2 * OPUS_PACKET_SAMPLES / rate)


@pytest.mark.parametrize(("encoding", "rate"), [
    (OutputEncoding.OGG_OPUS, 16_000), (OutputEncoding.WAV, 96_000), (OutputEncoding.PCM_S16LE, 4_000)])
def test_unsupported_rates_are_refused(encoding, rate):
    with pytest.raises(ValueError, match="Hz"):
        make_encoder(encoding, rate)
