"""Streaming encoders for output audio: float32 mono PCM in, encoded bytes out. Torch-free.

One encoder per stream. `encode(pcm)` returns the bytes for that piece (possibly empty while a
codec fills its first packet); `flush()` returns what is left at the end. Concatenating every
returned piece gives the whole encoded file.

A streamed file cannot know its length: WAV's sizes read 0xFFFFFFFF and FLAC's STREAMINFO
gives no total (libsndfile, and so soundfile, refuses to read such a FLAC whole).
`make_encoder(..., whole=True)` keeps everything until `flush()` and returns one exact file
instead: WAV with its real RIFF and data sizes, and FFmpeg's muxers writing to a seekable
buffer, so that they go back and fill in their headers (FLAC's total samples and MD5, MP3's
Xing/Info header).

Raw PCM and the WAV framing of the wire contract (csm_wire.wav) are written here; every
compressed format goes through FFmpeg's own encoders and muxers (PyAV), so the containers are
FFmpeg's: Ogg/Opus with the encoder's real pre-skip, granule positions and an end-of-stream
page, FLAC, MP3 and AAC in ADTS.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av
import numpy as np

from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE
from csm_wire import wav
from server.engine.types import OutputEncoding
from server.output_rates import rate_rule, supported_rate


@dataclass(frozen=True, slots=True)
class _Codec:
    """An FFmpeg encoder inside an FFmpeg muxer, set up to stream."""

    muxer: str
    encoder: str
    sample_format: str  # what the encoder is fed; PyAV converts our float32 to it
    bit_rate: int | None  # bit/s; None for lossless
    muxer_options: dict[str, str] = field(default_factory=dict)


_CODECS = {
    # One 20 ms Opus packet per Ogg page: a page leaves as soon as the next packet starts it,
    # so a stream's bytes trail its audio by at most one packet (the default is 1 s pages).
    OutputEncoding.OGG_OPUS: _Codec("ogg", "libopus", "flt", 48_000, {"page_duration": "20000"}),
    OutputEncoding.MP3: _Codec("mp3", "libmp3lame", "fltp", 64_000),
    OutputEncoding.AAC: _Codec("adts", "aac", "fltp", 64_000),
    # No 8 KiB padding block after STREAMINFO (nothing rewrites the header of a stream).
    OutputEncoding.FLAC: _Codec("flac", "flac", "s16", None, {"metadata_header_padding": "0"}),
}


def to_s16le(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class PcmS16Encoder:
    cpu_bound = False  # cheap enough for the event loop

    def encode(self, pcm: np.ndarray) -> bytes:
        return to_s16le(pcm)

    def flush(self) -> bytes:
        return b""


class PcmF32Encoder:
    cpu_bound = False

    def encode(self, pcm: np.ndarray) -> bytes:
        return pcm.astype("<f4", copy=False).tobytes()

    def flush(self) -> bytes:
        return b""


class WavEncoder:
    """16-bit WAV; the header (sizes unknown) goes out with the first piece."""

    cpu_bound = False

    def __init__(self, sample_rate: int):
        self._header: bytes | None = wav.header(sample_rate, None)

    def encode(self, pcm: np.ndarray) -> bytes:
        header, self._header = self._header or b"", None
        return header + to_s16le(pcm)

    def flush(self) -> bytes:
        header, self._header = self._header or b"", None
        return header  # an utterance without audio is still a valid (empty) WAV


class WholeWavEncoder:
    """16-bit WAV with its real sizes: every sample is kept until flush()."""

    cpu_bound = False

    def __init__(self, sample_rate: int):
        self._rate = sample_rate
        self._samples = bytearray()

    def encode(self, pcm: np.ndarray) -> bytes:
        self._samples += to_s16le(pcm)
        return b""

    def flush(self) -> bytes:
        data, self._samples = bytes(self._samples), bytearray()
        return wav.header(self._rate, len(data)) + data


class _Drain:
    """The muxer's output file: keeps what FFmpeg wrote until the encoder takes it.

    It has no `seek`, so FFmpeg treats the output as a pipe: it never goes back to rewrite a
    header, and it hands over each packet as soon as it is muxed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class _File(io.BytesIO):
    """A seekable output for a whole file: the muxer rewrites its header at the end."""

    def take(self) -> bytes:
        return b""  # nothing leaves before the trailer: the header may still change

    def take_all(self) -> bytes:
        return self.getvalue()


class FFmpegEncoder:
    """A compressed format through FFmpeg (PyAV). Pieces of any length go in; PyAV re-frames
    them into the codec's frame size, and the last, partial frame is encoded on flush."""

    cpu_bound = True  # 0.5 to 1.6 ms per 80 ms frame on one CPU core (libopus, LAME): off the event loop

    def __init__(self, encoding: OutputEncoding, sample_rate: int, whole: bool = False):
        codec = _CODECS[encoding]
        self._out = _File() if whole else _Drain()
        self._container = av.open(self._out, mode="w", format=codec.muxer, options=codec.muxer_options)
        options = {}
        if encoding is OutputEncoding.FLAC:
            # One FLAC block per CSM frame (80 ms) instead of FFmpeg's ~105 ms, so every frame leaves at once.
            options["frame_size"] = str(FRAME_SAMPLES * sample_rate // SAMPLE_RATE)
        self._stream = self._container.add_stream(codec.encoder, rate=sample_rate, layout="mono", options=options)
        self._stream.codec_context.format = codec.sample_format
        if codec.bit_rate is not None:
            self._stream.codec_context.bit_rate = codec.bit_rate
        self._rate = sample_rate
        self._pts = 0  # samples fed so far
        self._closed = False

    def encode(self, pcm: np.ndarray) -> bytes:
        if len(pcm) == 0:
            return b""
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += len(pcm)
        self._container.mux(self._stream.encode(frame))
        return self._out.take()

    def flush(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        self._container.mux(self._stream.encode(None))
        self._container.close()  # writes the trailer: Ogg's end-of-stream page, FLAC's last frame
        return self._out.take_all() if isinstance(self._out, _File) else self._out.take()


Encoder = PcmS16Encoder | PcmF32Encoder | WavEncoder | WholeWavEncoder | FFmpegEncoder


def make_encoder(encoding: OutputEncoding, sample_rate: int, whole: bool = False) -> Encoder:
    """`whole`: one exact file from flush() instead of pieces as they come (raw PCM has no
    header, so it is the same either way)."""
    if not supported_rate(encoding, sample_rate):
        raise ValueError(f"{sample_rate} Hz: {rate_rule(encoding)}")
    if encoding is OutputEncoding.PCM_S16LE:
        return PcmS16Encoder()
    if encoding is OutputEncoding.PCM_F32LE:
        return PcmF32Encoder()
    if encoding is OutputEncoding.WAV:
        return WholeWavEncoder(sample_rate) if whole else WavEncoder(sample_rate)
    return FFmpegEncoder(encoding, sample_rate, whole)
