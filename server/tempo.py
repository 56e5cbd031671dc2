"""Speaking rate: a streaming, pitch-preserving time stretch in front of an output encoder. Torch-free.

FFmpeg's `atempo` filter (WSOLA) through PyAV. One instance handles 0.5..2.0 without dropping
samples, so rates outside are a chain of instances (0.25 = 0.5 x 0.5; 4.0 = 2.0 x 2.0). The
filter holds back about one analysis window, so with a rate other than 1 the bytes of a
stream trail its audio by up to one 80 ms frame, and the stretched length is the generated
length / speed within a few milliseconds.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from server.audio_encoding import Encoder

MIN_SPEED, MAX_SPEED = 0.25, 4.0
_ATEMPO_RANGE = (0.5, 2.0)  # one atempo instance stretches without skipping samples in this range


def atempo_factors(speed: float) -> list[float]:
    """Factors in 0.5..2.0 whose product is `speed`."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed {speed} is outside {MIN_SPEED}..{MAX_SPEED}")
    low, high = _ATEMPO_RANGE
    factors = []
    while speed < low:
        factors.append(low)
        speed /= low
    while speed > high:
        factors.append(high)
        speed /= high
    return [*factors, speed]


class TimeStretch:
    """float32 mono PCM in, the same audio `speed` times faster (or slower) out."""

    def __init__(self, speed: float, sample_rate: int):
        self._rate = sample_rate
        self._graph = av.filter.Graph()
        nodes = [self._graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono",
                                         time_base=Fraction(1, sample_rate))]
        nodes += [self._graph.add("atempo", f"{factor:.6f}") for factor in atempo_factors(speed)]
        nodes.append(self._graph.add("abuffersink"))
        for upstream, downstream in zip(nodes, nodes[1:]):
            upstream.link_to(downstream)
        self._graph.configure()
        self._pts = 0

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if len(pcm) == 0:
            return pcm
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += len(pcm)
        self._graph.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._pull()

    def _pull(self) -> np.ndarray:
        pieces = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            pieces.append(frame.to_ndarray().reshape(-1))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


class StretchingEncoder:
    """An encoder fed through a TimeStretch: the same interface as the encoder it wraps."""

    cpu_bound = True

    def __init__(self, encoder: Encoder, speed: float, sample_rate: int):
        self._encoder = encoder
        self._stretch = TimeStretch(speed, sample_rate)

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._encoder.encode(self._stretch.process(pcm))

    def flush(self) -> bytes:
        return self._encoder.encode(self._stretch.flush()) + self._encoder.flush()


def with_speed(encoder: Encoder, speed: float, sample_rate: int) -> Encoder | StretchingEncoder:
    """`encoder` itself at speed 1, else the encoder behind a time stretch."""
    return encoder if speed == 1.0 else StretchingEncoder(encoder, speed, sample_rate)
