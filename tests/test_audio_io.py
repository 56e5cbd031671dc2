"""Context-audio decoding: each accepted format round-trips, each bad input says what to fix."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import sphn
import torch

from csm_core.audio_io import AudioDecodeError, decode_audio, resample


def _clip(rate: int = 16_000, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # [samples]


def _container(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _opus(samples: np.ndarray, rate: int, tmp_path) -> bytes:
    path = tmp_path / "clip.opus"
    sphn.write_opus(str(path), samples, rate)
    return path.read_bytes()


def test_module_does_not_import_torch() -> None:
    code = "import sys, csm_core.audio_io; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pcm_s16le_round_trip() -> None:
    clip = _clip()
    ints = np.round(clip * 32767).astype("<i2")
    samples, rate = decode_audio(ints.tobytes(), "pcm_s16le", 16_000)
    assert rate == 16_000 and samples.dtype == np.float32
    np.testing.assert_allclose(samples, ints / 32768.0, atol=1e-7)


def test_pcm_f32le_round_trip() -> None:
    clip = _clip(rate=24_000)
    samples, rate = decode_audio(clip.astype("<f4").tobytes(), "pcm_f32le", 24_000)
    assert rate == 24_000
    np.testing.assert_array_equal(samples, clip)


@pytest.mark.parametrize("encoding", ["wav", "auto"])
@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_wav_round_trip(encoding: str, subtype: str) -> None:
    clip = _clip(rate=22_050)
    samples, rate = decode_audio(_container(clip, 22_050, "WAV", subtype), encoding, None)
    assert rate == 22_050 and samples.shape == clip.shape
    np.testing.assert_allclose(samples, clip, atol=1 / 32768)


def test_flac_round_trip() -> None:
    clip = _clip(rate=48_000)
    samples, rate = decode_audio(_container(clip, 48_000, "FLAC", "PCM_16"), "auto", 12_345)  # rate ignored
    assert rate == 48_000
    np.testing.assert_allclose(samples, clip, atol=1 / 32768)


def test_ogg_vorbis_round_trip() -> None:
    clip = _clip(rate=24_000)
    samples, rate = decode_audio(_container(clip, 24_000, "OGG", "VORBIS"), "auto", None)
    assert rate == 24_000 and abs(samples.size - clip.size) < 1_000
    assert 0.15 < np.sqrt(np.mean(samples**2)) < 0.25  # lossy: the tone's power survives


@pytest.mark.parametrize("encoding", ["ogg_opus", "auto"])
def test_ogg_opus_round_trip(encoding: str, tmp_path) -> None:
    clip = _clip(rate=24_000, seconds=1.0)
    samples, rate = decode_audio(_opus(clip[None], 24_000, tmp_path), encoding, None)
    assert rate == 48_000  # Opus always decodes at 48 kHz
    assert abs(samples.size - 2 * clip.size) < 4_800
    assert 0.15 < np.sqrt(np.mean(samples**2)) < 0.25


def test_empty_data() -> None:
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(b"", "auto", None)


@pytest.mark.parametrize("encoding", ["wav", "auto"])
def test_zero_samples(encoding: str) -> None:
    data = _container(np.zeros(0, np.float32), 16_000, "WAV", "PCM_16")
    with pytest.raises(AudioDecodeError, match="no samples"):
        decode_audio(data, encoding, None)


def test_stereo_wav_is_rejected() -> None:
    data = _container(np.zeros((100, 2), np.float32), 16_000, "WAV", "PCM_16")
    with pytest.raises(AudioDecodeError, match="stereo audio is not supported: send mono"):
        decode_audio(data, "auto", None)


def test_stereo_opus_is_rejected(tmp_path) -> None:
    clip = _clip(rate=24_000)
    with pytest.raises(AudioDecodeError, match="stereo audio is not supported: send mono"):
        decode_audio(_opus(np.stack([clip, clip]), 24_000, tmp_path), "ogg_opus", None)


@pytest.mark.parametrize("encoding", ["auto", "wav", "ogg_opus"])
def test_undecodable_bytes(encoding: str) -> None:
    with pytest.raises(AudioDecodeError, match="cannot decode"):
        decode_audio(b"this is not audio at all" * 10, encoding, None)


def test_wav_encoding_with_flac_bytes() -> None:
    data = _container(_clip(), 16_000, "FLAC", "PCM_16")
    with pytest.raises(AudioDecodeError, match="encoding says WAV but the data is FLAC"):
        decode_audio(data, "wav", None)


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le"])
@pytest.mark.parametrize("rate", [None, 0])
def test_raw_pcm_needs_a_rate(encoding: str, rate) -> None:
    with pytest.raises(AudioDecodeError, match="sample_rate is required"):
        decode_audio(b"\x00" * 8, encoding, rate)


@pytest.mark.parametrize(("encoding", "size"), [("pcm_s16le", 3), ("pcm_f32le", 6)])
def test_raw_pcm_needs_whole_samples(encoding: str, size: int) -> None:
    with pytest.raises(AudioDecodeError, match=f"got {size} bytes"):
        decode_audio(b"\x00" * size, encoding, 16_000)


@pytest.mark.parametrize("rate", [7_999, 192_001])
def test_rate_out_of_range(rate: int) -> None:
    with pytest.raises(AudioDecodeError, match=r"out of range: use a rate in \[8000, 192000\]"):
        decode_audio(b"\x00\x00" * 10, "pcm_s16le", rate)


def test_rate_out_of_range_in_a_container() -> None:
    data = _container(np.zeros(100, np.float32), 4_000, "WAV", "PCM_16")
    with pytest.raises(AudioDecodeError, match="4000 Hz is out of range"):
        decode_audio(data, "auto", None)


def test_non_finite_float_samples() -> None:
    data = np.array([0.0, np.nan], dtype="<f4").tobytes()
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_audio(data, "pcm_f32le", 16_000)


def test_unknown_encoding() -> None:
    with pytest.raises(AudioDecodeError, match="use one of auto, pcm_s16le"):
        decode_audio(b"\x00\x00", "mp3", None)


def test_resample() -> None:
    wave = torch.from_numpy(_clip(rate=16_000))
    assert resample(wave, 16_000, 16_000) is wave
    up = resample(wave, 16_000, 24_000)
    assert up.shape == (12_000,)
    assert abs(up.pow(2).mean().sqrt().item() - wave.pow(2).mean().sqrt().item()) < 0.01
    with pytest.raises(ValueError, match="positive"):
        resample(wave, 0, 24_000)
