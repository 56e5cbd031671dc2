"""The voice registry's encoder on the real Mimi (random weights): the codes are the engine's
own encoding of the same audio, and the codec names the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_core.audio_io import resample
from csm_core.constants import NUM_CODEBOOKS, SAMPLE_RATE
from csm_core.mimi import MimiCodec
from server.voices.mimi_encoder import MimiVoiceEncoder, weights_fingerprint
from server.voices.registry import Clip


@pytest.fixture(scope="module")
def mimi():
    return MimiCodec.load("random", "cpu")


def test_codes_match_the_engines_encoding(mimi):
    rng = np.random.default_rng(0)
    clips = [Clip((0.1 * rng.standard_normal(16_000)).astype(np.float32), 16_000),
             Clip((0.1 * rng.standard_normal(9_000)).astype(np.float32), SAMPLE_RATE)]
    encoder = MimiVoiceEncoder(mimi, torch_threads=1)
    try:
        codes = encoder.encode(clips)
    finally:
        encoder.close()
    with torch.no_grad():
        expected = mimi.encode([resample(torch.from_numpy(c.samples), c.sample_rate, SAMPLE_RATE) for c in clips])
    assert [c.shape for c in codes] == [(NUM_CODEBOOKS, 13), (NUM_CODEBOOKS, 5)]
    for got, want in zip(codes, expected):
        assert got.dtype == np.int16
        np.testing.assert_array_equal(got, want.numpy())


def test_codec_fingerprint_names_the_weights(mimi):
    encoder = MimiVoiceEncoder(mimi)
    encoder.close()
    assert encoder.codec.startswith("mimi:") and len(encoder.codec) == len("mimi:") + 16
    assert encoder.codec == f"mimi:{weights_fingerprint(MimiCodec.load('random', 'cpu').model)}"
    layer = torch.nn.Linear(4, 4)
    before = weights_fingerprint(layer)
    with torch.no_grad():
        layer.weight[0, 0] += 1e-3
    assert weights_fingerprint(layer) != before
