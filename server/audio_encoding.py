"""Streaming encoders for output audio: float32 mono PCM in, encoded bytes out. Torch-free.

One encoder per stream. `encode(pcm)` returns the bytes for that piece (possibly empty: the
Opus encoder holds back samples until it has a whole Opus packet); `flush()` returns what is
left at the end. Concatenating every returned piece gives the whole encoded utterance.
"""

from __future__ import annotations

import numpy as np
import sphn

from csm_wire import wav
from server.engine.types import OutputEncoding


PCM_RATE_RANGE = (8_000, 48_000)  # PCM and WAV output: any rate in this range (Hz)
OPUS_RATES = (24_000, 48_000)  # Ogg/Opus output rates
# sphn encodes 960-sample packets (40 ms at 24 kHz, 20 ms at 48 kHz) and holds back a partial
# one; feeding whole packets makes every CSM frame (1920 samples at 24 kHz) leave at once.
OPUS_PACKET_SAMPLES = 960


def supported_rate(encoding: OutputEncoding, sample_rate: int) -> bool:
    if encoding is OutputEncoding.OGG_OPUS:
        return sample_rate in OPUS_RATES
    return PCM_RATE_RANGE[0] <= sample_rate <= PCM_RATE_RANGE[1]


def rate_rule(encoding: OutputEncoding) -> str:
    """The accepted output rates, in words, for error messages."""
    if encoding is OutputEncoding.OGG_OPUS:
        return "Ogg/Opus output supports 24000 or 48000 Hz"
    return f"PCM and WAV output support any rate from {PCM_RATE_RANGE[0]} to {PCM_RATE_RANGE[1]} Hz"


def to_s16le(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class PcmS16Encoder:
    def encode(self, pcm: np.ndarray) -> bytes:
        return to_s16le(pcm)

    def flush(self) -> bytes:
        return b""


class PcmF32Encoder:
    def encode(self, pcm: np.ndarray) -> bytes:
        return pcm.astype("<f4", copy=False).tobytes()

    def flush(self) -> bytes:
        return b""


class WavEncoder:
    """16-bit WAV; the header (sizes unknown) goes out with the first piece."""

    def __init__(self, sample_rate: int):
        self._header: bytes | None = wav.header(sample_rate, None)

    def encode(self, pcm: np.ndarray) -> bytes:
        header, self._header = self._header or b"", None
        return header + to_s16le(pcm)

    def flush(self) -> bytes:
        header, self._header = self._header or b"", None
        return header  # an utterance without audio is still a valid (empty) WAV


class OggOpusEncoder:
    """Ogg/Opus through sphn; feeds whole packets and zero-pads the last one on flush."""

    def __init__(self, sample_rate: int):
        self._writer = sphn.OpusStreamWriter(sample_rate)
        self._pending = np.zeros(0, np.float32)  # [< OPUS_PACKET_SAMPLES] waiting for a packet

    def encode(self, pcm: np.ndarray) -> bytes:
        buf = np.concatenate([self._pending, pcm.astype(np.float32, copy=False)])
        n = OPUS_PACKET_SAMPLES
        whole = len(buf) - len(buf) % n
        out = [self._writer.append_pcm(buf[i : i + n]) for i in range(0, whole, n)]
        self._pending = buf[whole:]
        return b"".join(out)

    def flush(self) -> bytes:
        if len(self._pending) == 0:
            return b""
        tail = np.zeros(OPUS_PACKET_SAMPLES, np.float32)
        tail[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, np.float32)
        return self._writer.append_pcm(tail)


Encoder = PcmS16Encoder | PcmF32Encoder | WavEncoder | OggOpusEncoder


def make_encoder(encoding: OutputEncoding, sample_rate: int) -> Encoder:
    if not supported_rate(encoding, sample_rate):
        raise ValueError(f"{sample_rate} Hz: {rate_rule(encoding)}")
    if encoding is OutputEncoding.PCM_S16LE:
        return PcmS16Encoder()
    if encoding is OutputEncoding.PCM_F32LE:
        return PcmF32Encoder()
    if encoding is OutputEncoding.WAV:
        return WavEncoder(sample_rate)
    return OggOpusEncoder(sample_rate)
