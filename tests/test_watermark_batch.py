"""Batched watermarking: `Watermarker.apply_batch` against silentcipher's own per-stream call
(random weights, CPU), and the output stage batching every ready chunk while keeping streams apart."""

from __future__ import annotations

import threading

import pytest
import torch

from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE
from csm_core.watermark import Watermarker
from server.engine.messages import PcmFrames, StreamEnd, StreamFailed, StreamRef
from server.engine.output import OutputStage
from server.engine.types import AudioOut, Finished, FinishReason

# apply_batch computes each row as silentcipher's encode_wav computes a batch of one; only the
# order of float32 operations differs (batched convolutions, power summed in float64). Measured:
# at most 5e-7 on waves of peak ~1 whose watermark is ~2e-2: 1e-5 is -100 dB re full scale.
TOLERANCE = 1e-5


def _speechlike(seed: int, samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SAMPLE_RATE
    tone = (0.1 + 0.1 * seed) * torch.sin(2 * torch.pi * (150 + 40 * seed) * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
    return tone + 0.02 * torch.randn(samples, generator=generator)  # float32 [samples]


def test_batched_watermark_equals_per_stream_watermark() -> None:
    marker = Watermarker.load(None)
    first = 3 * FRAME_SAMPLES  # a first chunk
    waves = [_speechlike(s, first) for s in (1, 2, 3)] + [torch.zeros(first), _speechlike(4, FRAME_SAMPLES)]
    bn = marker.model.dec_c.main[0].bn
    stats = bn.running_mean.clone()
    batched = marker.apply_batch(waves)
    assert torch.equal(bn.running_mean, stats)  # no module state is touched
    for wave, got in zip(waves, batched):
        want = marker.apply(wave)  # silentcipher's encode_wav, this stream alone
        assert got.shape == wave.shape and got.dtype == torch.float32
        assert (got - want).abs().max() <= TOLERANCE
        if wave.any():
            assert (got - wave).abs().max() > 100 * TOLERANCE  # it is watermarked
        else:
            assert torch.equal(got, wave)


def test_a_wave_that_is_not_finite_fails_the_batched_call() -> None:
    marker = Watermarker.load(None)
    bad = _speechlike(1, 960)
    bad[5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        marker.apply_batch([_speechlike(2, 960), bad])
    with pytest.raises(ValueError, match="mono"):
        marker.apply_batch([torch.zeros(2, 10)])


class _Sink:
    def __init__(self):
        self.events: list = []
        self.done = threading.Event()

    def push(self, event) -> None:
        self.events.append(event)
        if isinstance(event, Finished):
            self.done.set()


class _GatedMarker:
    """Adds 1 to every sample; records each call's batch; the first call waits for `gate`;
    a call fails when any of its waves holds BAD."""

    BAD = 7.0

    def __init__(self):
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def apply_batch(self, pcms):
        self.calls.append(len(pcms))
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(10)
        if any(bool((p == self.BAD).any()) for p in pcms):
            raise RuntimeError("injected watermark failure")
        return [p + 1 for p in pcms]

    def replica(self):
        return self


def _frame(value: float) -> torch.Tensor:
    return torch.full((FRAME_SAMPLES,), value)


def _end(stream: StreamRef, frames: int) -> StreamEnd:
    return StreamEnd(stream, FinishReason.LENGTH, None, frames, 0, 0.0, 0.0, 0.0)


def test_ready_chunks_of_all_streams_are_watermarked_in_one_call_and_a_failure_stays_with_its_stream() -> None:
    marker, failures = _GatedMarker(), []
    stage = OutputStage(marker, first_chunk_frames=2, chunk_frames=3,
                        report=lambda msg: failures.append(msg), torch_threads=1, workers=1)
    try:
        streams = [StreamRef(i, f"s{i}", i, SAMPLE_RATE, _Sink()) for i in range(4)]
        values = {0: [1, 2, 3], 1: [10, 11, 12, 13, 14], 2: [20, _GatedMarker.BAD], 3: [30, 31]}
        # Stream 0's first chunk starts the first call, which waits: the rest is queued meanwhile.
        stage.frames(PcmFrames(streams[0], torch.cat([_frame(1), _frame(2)]), 2))
        assert marker.entered.wait(10)
        for sid in (1, 2, 3):
            for v in values[sid]:
                stage.frames(PcmFrames(streams[sid], _frame(v), 1))
        stage.frames(PcmFrames(streams[0], _frame(3), 1))
        for s in streams:
            stage.end(_end(s, len(values[s.id])))
        marker.gate.set()
        for s in streams:
            assert s.sink.done.wait(10)
        # The first call held stream 0's first chunk; the second every chunk then ready (1: 2+3
        # frames, 2: 2, 3: 2, 0's last); it failed (stream 2), so each chunk went alone.
        assert marker.calls[:2] == [1, 5] and marker.calls[2:] == [1] * 5
        assert [type(m) for m in failures] == [StreamFailed] and failures[0].ids == (2,)
        for s in streams:
            audio = [e for e in s.sink.events if isinstance(e, AudioOut)]
            end = s.sink.events[-1]
            if s.id == 2:
                assert audio == [] and end.reason is FinishReason.ERROR and "injected" in end.error
                continue
            assert end.reason is FinishReason.LENGTH and end.error is None
            got = torch.cat([torch.from_numpy(a.pcm) for a in audio])
            want = torch.cat([_frame(v) for v in values[s.id]]) + 1
            assert torch.equal(got, want)  # in order, each stream only its own
            assert [a.frames for a in audio] == {0: [2, 1], 1: [2, 3], 3: [2]}[s.id]
    finally:
        stage.close()
