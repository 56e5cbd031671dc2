"""Context audio from the wire: bytes -> float32 mono samples, with errors a caller can act on.

Imports no torch at module level: the gRPC servicer decodes (and rejects) audio with it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    import torch

ENCODINGS = ("auto", "pcm_s16le", "pcm_f32le", "wav", "ogg_opus")
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
_RAW_SAMPLE = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}
RAW_SAMPLE_BYTES = {name: dtype.itemsize for name, dtype in _RAW_SAMPLE.items()}  # bytes per raw PCM sample
_WAV_FORMATS = ("WAV", "WAVEX", "RF64")


class AudioDecodeError(ValueError):
    """The audio bytes cannot be used as sent; the message says what to change."""


def decode_audio(data: bytes, encoding: str, sample_rate: int | None) -> tuple[np.ndarray, int]:
    """Decode one mono clip. Returns (float32 [samples], sample rate in Hz).

    encoding: "auto" (WAV, FLAC, Ogg/Vorbis, Ogg/Opus, detected from the bytes), "wav",
    "ogg_opus", or raw little-endian "pcm_s16le" / "pcm_f32le". `sample_rate` is required
    for raw PCM and ignored for containers, which carry their own (0 counts as not given).
    Ogg/Opus is always read by sphn, so "auto" and "ogg_opus" give the same samples.
    """
    if encoding not in ENCODINGS:
        raise AudioDecodeError(f"unknown audio encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    if not data:
        raise AudioDecodeError("audio data is empty: send the bytes of a mono clip")
    if encoding in _RAW_SAMPLE:
        samples, rate = _decode_raw(data, encoding, sample_rate)
    elif encoding == "ogg_opus" or (encoding == "auto" and _is_ogg_opus(data)):
        samples, rate = _decode_opus(data)
    else:
        samples, rate = _decode_container(data, wav_only=encoding == "wav")
    if samples.size == 0:
        raise AudioDecodeError("audio holds no samples: send at least one sample of audio")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"sample rate {rate} Hz is out of range: use a rate in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
        )
    if not np.isfinite(samples).all():
        raise AudioDecodeError("audio contains NaN or infinite samples: send finite values in [-1, 1]")
    return np.ascontiguousarray(samples, dtype=np.float32), rate


def resample(wave: "torch.Tensor", sr_in: int, sr_out: int) -> "torch.Tensor":
    """Band-limited resampling of [..., samples]; the same tensor back when the rates match."""
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return wave
    import torchaudio.functional as AF

    return AF.resample(wave, sr_in, sr_out)


def _decode_raw(data: bytes, encoding: str, sample_rate: int | None) -> tuple[np.ndarray, int]:
    if not sample_rate:
        raise AudioDecodeError(f"sample_rate is required for raw {encoding} audio: set it to the rate of the samples")
    sample = _RAW_SAMPLE[encoding]
    if len(data) % sample.itemsize:
        raise AudioDecodeError(
            f"{encoding} data must be whole {sample.itemsize}-byte samples, got {len(data)} bytes: "
            "check the encoding or send the complete buffer"
        )
    values = np.frombuffer(data, dtype=sample)
    if encoding == "pcm_s16le":
        return values.astype(np.float32) / 32768.0, int(sample_rate)
    return values.astype(np.float32), int(sample_rate)


def _is_ogg_opus(data: bytes) -> bool:
    return data[:4] == b"OggS" and b"OpusHead" in data[:128]


def _decode_opus(data: bytes) -> tuple[np.ndarray, int]:
    import sphn

    try:
        channels, rate = sphn.read_opus_bytes(data)  # [channels, samples] float32, always 48 kHz
    except Exception as error:
        raise AudioDecodeError(f"cannot decode the audio as Ogg/Opus ({error}): send a valid .opus stream") from error
    if channels.shape[0] > 1:
        raise AudioDecodeError(f"stereo audio is not supported: send mono (got {channels.shape[0]} channels)")
    return channels.reshape(-1), int(rate)


def _decode_container(data: bytes, wav_only: bool) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            if wav_only and audio.format not in _WAV_FORMATS:
                raise AudioDecodeError(
                    f"encoding says WAV but the data is {audio.format}: send WAV or use encoding auto"
                )
            if audio.channels > 1:
                raise AudioDecodeError(f"stereo audio is not supported: send mono (got {audio.channels} channels)")
            samples = audio.read(dtype="float32", always_2d=True)  # [samples, 1]
            return samples[:, 0], int(audio.samplerate)
    except sf.SoundFileError as error:
        expected = "WAV" if wav_only else "WAV, FLAC, Ogg/Vorbis or Ogg/Opus"
        reason = (getattr(error, "error_string", None) or "unreadable data").rstrip(".")
        raise AudioDecodeError(
            f"cannot decode the audio ({reason}): send {expected}, or raw PCM with its encoding"
        ) from error
