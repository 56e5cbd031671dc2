"""What a seed repeats, with the watermark on (the default): the frames exactly, the audio to
within floating-point rounding, alone or among other streams (protos/csm/v1/speech.proto,
Sampling.seed). Watermark chunks start at fixed frame counts, never where Mimi's batching
happened to cut, so the watermark sees the same input on every run."""

import numpy as np
import pytest

from server.engine.config import EngineConfig
from server.engine.types import AudioOut, Finished, SynthesisParams

from engines import recording_engine

ONE_LSB = 1 / 32768  # one step of 16-bit PCM


@pytest.fixture(scope="module")
def engine():
    eng = recording_engine(EngineConfig(model="tiny", device="cpu", dtype="float32", watermark=True, max_slots=4))
    yield eng
    eng.shutdown()


def run(engine, label: str, seed: int = 11) -> np.ndarray:
    events = list(engine.submit(SynthesisParams(text="The same seed.", seed=seed, max_audio_ms=2400, request_id=label)))
    assert isinstance(events[-1], Finished) and events[-1].watermarked
    return np.concatenate([e.pcm for e in events if isinstance(e, AudioOut)])


def test_a_seeded_request_repeats_alone_and_among_others(engine):
    first = run(engine, "first")
    again = run(engine, "again")
    others = [engine.submit(SynthesisParams(text=f"Another stream {i}.", seed=100 + i, max_audio_ms=3200))
              for i in range(3)]
    crowded = run(engine, "crowded")
    for stream in others:
        list(stream)
    codes = [np.stack([c.numpy() for c in engine.frames[label]]) for label in ("first", "again", "crowded")]
    assert all(np.array_equal(codes[0], c) for c in codes[1:])  # the frames: exactly
    for audio in (again, crowded):  # the audio: rounding, far below one 16-bit step (it was 201 steps)
        assert len(audio) == len(first)
        assert np.abs(audio - first).max() < ONE_LSB / 4
