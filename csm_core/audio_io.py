"""Context audio from the wire: bytes -> float32 mono samples, with errors a caller can act on.

Imports no torch at module level: the gRPC servicer decodes (and rejects) audio with it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from csm_core.ogg_opus import OPUS_RATE, opus_length

if TYPE_CHECKING:
    import torch

ENCODINGS = ("auto", "pcm_s16le", "pcm_f32le", "wav", "ogg_opus")
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
_RAW_SAMPLE = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}
RAW_SAMPLE_BYTES = {name: dtype.itemsize for name, dtype in _RAW_SAMPLE.items()}  # bytes per raw PCM sample
_WAV_FORMATS = ("WAV", "WAVEX", "RF64")
_UNKNOWN_FRAMES = 2**62  # libsndfile's frame count of a stream that does not say its length (SF_COUNT_MAX)
_BLOCK_FRAMES = 1 << 16  # frames per read: 256 KiB of float32, ~1.4 s at 48 kHz


class AudioDecodeError(ValueError):
    """The audio bytes cannot be used as sent; the message says what to change."""


class AudioTooLong(AudioDecodeError):
    """The clip runs past the caller's limit, found before it was decoded whole: from its size
    (raw PCM), its container's header, its packets (Ogg/Opus), or a count of the samples decoded
    so far that stopped at the limit (a header can lie)."""

    def __init__(self, limit_s: float, seconds: float | None):
        self.limit_s = limit_s
        self.seconds = seconds  # its length when known; None: decoding stopped at the limit
        if seconds is None:
            super().__init__(f"runs longer than the {limit_s:g} s accepted")
        else:
            super().__init__(f"{seconds:.1f} s is longer than the {limit_s:g} s accepted")


def decode_audio(data: bytes, encoding: str, sample_rate: int | None,
                 max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode one mono clip. Returns (float32 [samples], sample rate in Hz).

    encoding: "auto" (WAV, FLAC, Ogg/Vorbis, Ogg/Opus, detected from the bytes), "wav",
    "ogg_opus", or raw little-endian "pcm_s16le" / "pcm_f32le". `sample_rate` is required
    for raw PCM and ignored for containers, which carry their own (0 counts as not given).
    Ogg/Opus is always read by sphn, so "auto" and "ogg_opus" give the same samples.

    With `max_seconds`, a longer clip raises AudioTooLong having cost at most that many seconds
    of samples: its length is known before decoding (raw PCM's size, a container's header,
    Ogg/Opus's packets) and containers are decoded in blocks that stop at the limit.
    """
    if encoding not in ENCODINGS:
        raise AudioDecodeError(f"unknown audio encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    if not data:
        raise AudioDecodeError("audio data is empty: send the bytes of a mono clip")
    if encoding in _RAW_SAMPLE:
        samples, rate = _decode_raw(data, encoding, sample_rate, max_seconds)
    elif encoding == "ogg_opus" or (encoding == "auto" and _is_ogg_opus(data)):
        samples, rate = _decode_opus(data, max_seconds)
    else:
        samples, rate = _decode_container(data, encoding == "wav", max_seconds)
    if samples.size == 0:
        raise AudioDecodeError("audio holds no samples: send at least one sample of audio")
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


def _check_rate(rate: int) -> int:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"sample rate {rate} Hz is out of range: use a rate in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
        )
    return rate


def _check_length(frames: int, rate: int, max_seconds: float | None) -> None:
    if max_seconds is not None and frames > max_seconds * rate:
        raise AudioTooLong(max_seconds, frames / rate)


def _decode_raw(data: bytes, encoding: str, sample_rate: int | None,
                max_seconds: float | None) -> tuple[np.ndarray, int]:
    if not sample_rate:
        raise AudioDecodeError(f"sample_rate is required for raw {encoding} audio: set it to the rate of the samples")
    sample = _RAW_SAMPLE[encoding]
    if len(data) % sample.itemsize:
        raise AudioDecodeError(
            f"{encoding} data must be whole {sample.itemsize}-byte samples, got {len(data)} bytes: "
            "check the encoding or send the complete buffer"
        )
    rate = _check_rate(int(sample_rate))
    _check_length(len(data) // sample.itemsize, rate, max_seconds)
    values = np.frombuffer(data, dtype=sample)
    if encoding == "pcm_s16le":
        return values.astype(np.float32) / 32768.0, rate
    return values.astype(np.float32), rate


def _is_ogg_opus(data: bytes) -> bool:
    return data[:4] == b"OggS" and b"OpusHead" in data[:128]


def _decode_opus(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import sphn

    limit = float("inf") if max_seconds is None else max_seconds * OPUS_RATE
    try:
        length = opus_length(data, stop_after=limit)
    except ValueError as error:
        raise AudioDecodeError(f"cannot decode the audio as Ogg/Opus ({error}): send a valid .opus stream") from error
    if length.channels > 1:
        raise AudioDecodeError(f"stereo audio is not supported: send mono (got {length.channels} channels)")
    if not length.complete:
        raise AudioTooLong(max_seconds, None)
    try:
        channels, rate = sphn.read_opus_bytes(data)  # [channels, samples] float32, always 48 kHz
    except BaseException as error:  # a panic in sphn's Rust arrives as pyo3's PanicException, a BaseException
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise AudioDecodeError(f"cannot decode the audio as Ogg/Opus ({error}): send a valid .opus stream") from error
    if channels.shape[0] > 1:
        raise AudioDecodeError(f"stereo audio is not supported: send mono (got {channels.shape[0]} channels)")
    return channels.reshape(-1), int(rate)


def _decode_container(data: bytes, wav_only: bool, max_seconds: float | None) -> tuple[np.ndarray, int]:
    expected = "WAV" if wav_only else "WAV, FLAC, Ogg/Vorbis or Ogg/Opus"
    try:
        with _Sequential(io.BytesIO(data)) as audio:
            if wav_only and audio.format not in _WAV_FORMATS:
                raise AudioDecodeError(
                    f"encoding says WAV but the data is {audio.format}: send WAV or use encoding auto"
                )
            if audio.channels > 1:
                raise AudioDecodeError(f"stereo audio is not supported: send mono (got {audio.channels} channels)")
            rate = _check_rate(int(audio.samplerate))
            declared = audio.frames if audio.frames < _UNKNOWN_FRAMES else None
            if declared is not None:
                _check_length(declared, rate, max_seconds)
            limit = float("inf") if max_seconds is None else max_seconds * rate
            return _read_blocks(audio, declared, limit, max_seconds), rate
    except sf.SoundFileError as error:
        reason = (getattr(error, "error_string", None) or "unreadable data").rstrip(".")
        raise AudioDecodeError(
            f"cannot decode the audio ({reason}): send {expected}, or raw PCM with its encoding"
        ) from error


class _Sequential(sf.SoundFile):
    """A sound file read front to back. soundfile seeks after every read of a seekable file, and
    that seek fails on a stream that does not declare its length (FLAC written while streaming,
    as this server's own HTTP `flac` output is); reading front to back never needs it."""

    def seekable(self) -> bool:
        return False


def _read_blocks(audio: sf.SoundFile, declared: int | None, limit: float, max_seconds: float | None) -> np.ndarray:
    """Every frame, in blocks: first into one array of the length the header declares (an
    honest clip is held once), then whatever follows it (a header that lies, or none) with a
    running count that raises AudioTooLong as soon as it passes `limit` frames."""
    out = np.empty(declared or 0, np.float32)  # [samples]
    n = 0
    while n < len(out):
        got = len(audio.read(_BLOCK_FRAMES, dtype="float32", out=out[n:n + _BLOCK_FRAMES]))
        if got == 0:
            return out[:n].copy()
        n += got
    more = []
    while len(block := audio.read(_BLOCK_FRAMES, dtype="float32")):
        n += len(block)
        if n > limit:
            raise AudioTooLong(max_seconds, None)
        more.append(block)
    return np.concatenate([out, *more]) if more else out
