"""Streaming output encoders: every format decodes to the audio that went in, piece by piece, as
read back by independent decoders (the ffmpeg and opusinfo programs, tests/decoders.py)."""

import io
import struct
import wave

import numpy as np
import pytest
import soundfile as sf
from decoders import OPUS_DECODE_RATE, OPUS_FRAME_SAMPLES, ffmpeg_decode, ffprobe_rate, opus_pre_skip, opusinfo

from csm_wire import wav
from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE
from server.audio_encoding import OutputEncoding, make_encoder
from server.tempo import atempo_factors, with_speed


def tone(n: int, rate: int, hz: float = 220.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


def encode_frames(encoding: OutputEncoding, rate: int, frames: int, extra: int = 0,
                  ) -> tuple[list[bytes], bytes, np.ndarray]:
    """Pieces of one stream fed a CSM frame at a time (then `extra` samples), the flushed tail,
    and the PCM fed."""
    per_frame = FRAME_SAMPLES * rate // SAMPLE_RATE
    pcm = tone(per_frame * frames + extra, rate)
    encoder = make_encoder(encoding, rate)
    pieces = [encoder.encode(pcm[i:i + per_frame]) for i in range(0, len(pcm), per_frame)]
    return pieces, encoder.flush(), pcm


def correlation(decoded: np.ndarray, pcm: np.ndarray, rate: int) -> float:
    """Normalised cross-correlation at lag 0 of a stream decoded at 48 kHz and the PCM fed at `rate`."""
    reference = np.repeat(pcm, OPUS_DECODE_RATE // rate)
    n = min(len(decoded), len(reference))
    a, b = decoded[:n] / 32767.0, reference[:n]
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


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
def test_opus_is_a_correct_ogg_stream_that_decodes_to_the_same_length(rate):
    pieces, tail, pcm = encode_frames(OutputEncoding.OGG_OPUS, rate, 5, extra=333)
    assert all(pieces[:5]), "a whole CSM frame must leave the encoder at once"
    assert pieces[0].startswith(b"OggS") and b"OpusHead" in pieces[0]
    data = b"".join(pieces) + tail
    report = opusinfo(data)  # pre-skip, granule positions, end of stream: no warning
    # The encoder's real look-ahead (312 samples at 48 kHz), not a made-up 80 ms.
    assert 0 < opus_pre_skip(report) < 960
    decoded = ffmpeg_decode(data, "opus")  # libopus, honouring pre-skip and the end granule
    assert abs(len(decoded) - len(pcm) * OPUS_DECODE_RATE // rate) <= OPUS_FRAME_SAMPLES
    assert correlation(decoded, pcm, rate) > 0.9


def test_opus_stream_trails_its_audio_by_at_most_one_packet():
    rate = 24_000
    encoder = make_encoder(OutputEncoding.OGG_OPUS, rate)
    sent = b""
    for i in range(1, 4):
        sent += encoder.encode(tone(FRAME_SAMPLES, rate))
        decodable = len(ffmpeg_decode(sent, "opus")) // 2  # at 24 kHz
        assert decodable >= i * FRAME_SAMPLES - OPUS_FRAME_SAMPLES


@pytest.mark.parametrize(("encoding", "fmt", "extra_samples"), [
    (OutputEncoding.FLAC, "flac", (0, 0)),
    # Streamed MP3 and ADTS cannot say how much priming and padding the encoder added.
    (OutputEncoding.MP3, "mp3", (1105, 1105 + 2 * 576)),  # LAME delay + decoder delay; 576-sample frames
    (OutputEncoding.AAC, "aac", (1024, 2 * 1024)),  # AAC priming; 1024-sample frames
])
def test_ffmpeg_formats_decode_to_the_fed_length(encoding, fmt, extra_samples):
    pieces, tail, pcm = encode_frames(encoding, SAMPLE_RATE, 6, extra=101)
    data = b"".join(pieces) + tail
    assert ffprobe_rate(data, fmt) == SAMPLE_RATE
    decoded = ffmpeg_decode(data, fmt)
    low, high = extra_samples
    assert low <= len(decoded) - len(pcm) <= high
    if encoding is OutputEncoding.FLAC:
        assert pieces[0], "one FLAC block per CSM frame: the first frame leaves at once"
        np.testing.assert_allclose(decoded / 32767, pcm, atol=1.5 / 32767)


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2.0, 4.0])
def test_speed_stretches_the_audio_without_changing_its_pitch(speed):
    rate = SAMPLE_RATE
    encoder = with_speed(make_encoder(OutputEncoding.PCM_S16LE, rate), speed, rate)
    pcm = tone(FRAME_SAMPLES * 10, rate, hz=300.0)
    data = b"".join(encoder.encode(pcm[i:i + FRAME_SAMPLES]) for i in range(0, len(pcm), FRAME_SAMPLES))
    out = np.frombuffer(data + encoder.flush(), "<i2") / 32767
    assert len(out) == pytest.approx(len(pcm) / speed, abs=0.1 * rate)  # within 100 ms
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert np.argmax(spectrum) * rate / len(out) == pytest.approx(300.0, abs=10.0)


def test_speed_one_leaves_the_encoder_alone():
    encoder = make_encoder(OutputEncoding.WAV, SAMPLE_RATE)
    assert with_speed(encoder, 1.0, SAMPLE_RATE) is encoder
    assert atempo_factors(0.25) == [0.5, 0.5] and atempo_factors(3.0) == [2.0, 1.5]
    with pytest.raises(ValueError):
        atempo_factors(5.0)


@pytest.mark.parametrize(("encoding", "rate"), [
    (OutputEncoding.OGG_OPUS, 16_000), (OutputEncoding.WAV, 96_000), (OutputEncoding.PCM_S16LE, 4_000),
    (OutputEncoding.MP3, 23_000)])
def test_unsupported_rates_are_refused(encoding, rate):
    with pytest.raises(ValueError, match="Hz"):
        make_encoder(encoding, rate)


@pytest.mark.parametrize("encoding", [OutputEncoding.WAV, OutputEncoding.FLAC])
def test_a_whole_file_carries_its_length(encoding, tmp_path):
    """`whole=True`: nothing leaves before flush(), which returns one file with its real sizes,
    read whole by libsndfile, Python's wave and ffprobe."""
    pcm = tone(3 * FRAME_SAMPLES + 123, SAMPLE_RATE)
    encoder = make_encoder(encoding, SAMPLE_RATE, whole=True)
    assert encoder.encode(pcm[:1000]) == encoder.encode(pcm[1000:]) == b""
    data = encoder.flush()
    path = tmp_path / ("whole.wav" if encoding is OutputEncoding.WAV else "whole.flac")
    path.write_bytes(data)
    samples, rate = sf.read(path, dtype="int16")
    assert (len(samples), rate) == (len(pcm), SAMPLE_RATE)
    np.testing.assert_allclose(samples / 32767, pcm, atol=1e-4)
    assert len(ffmpeg_decode(data, "wav" if encoding is OutputEncoding.WAV else "flac")) == len(pcm)
    if encoding is OutputEncoding.WAV:
        with wave.open(io.BytesIO(data)) as reader:
            assert reader.getnframes() == len(pcm)
        assert struct.unpack_from("<I", data, 40)[0] == 2 * len(pcm)


def test_a_whole_file_of_no_audio_is_still_a_file():
    empty = make_encoder(OutputEncoding.WAV, SAMPLE_RATE, whole=True).flush()
    assert empty == wav.header(SAMPLE_RATE, 0)
