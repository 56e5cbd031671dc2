"""The requests every csm-bench run serves, and the synthetic audio of their contexts."""

from __future__ import annotations

import numpy as np

from csm_core.constants import FRAME_MS, SAMPLE_RATE
from server.engine.types import ContextSegment, SynthesisParams

REQUEST_SEED = 1000  # request i samples with seed REQUEST_SEED + i in every run
WARMUP_AUDIO_MS = 12 * FRAME_MS  # long enough for a first and a later watermark chunk

TEXTS = (
    "Hello there, thanks for calling. How can I help you today?",
    "The weather tomorrow looks bright, with a light breeze in the afternoon.",
    "I'm not sure that's right; could you check the numbers again?",
    "Turn left at the second light and the station is on your right.",
    "We finished the first draft last night, so the review can start on Monday.",
    "Oh, that's wonderful news! Congratulations to the whole team.",
    "Please hold for a moment while I look up your order.",
    "Once upon a time, in a village by the sea, there lived an old clockmaker.",
)


def synthetic_audio(seconds: float, seed: int) -> np.ndarray:
    """Seeded noise under a syllable-rate envelope: `seconds` of mono float32 at 24 kHz."""
    n = max(1, round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)  # about 4 syllables per second
    return (0.1 * envelope * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)  # [n]


def make_requests(n: int, max_audio_ms: int, context_s: float) -> list[SynthesisParams]:
    """The fixed set every run serves: same texts, speakers, seeds and lengths."""
    requests = []
    for i in range(n):
        context = ()
        if context_s > 0:
            context = (ContextSegment(speaker=(i + 1) % 2, text=TEXTS[(i + 3) % len(TEXTS)],
                                      audio=synthetic_audio(context_s, seed=i)),)
        requests.append(SynthesisParams(text=TEXTS[i % len(TEXTS)], speaker=i % 2, context=context,
                                        seed=REQUEST_SEED + i, max_audio_ms=max_audio_ms, request_id=f"bench-{i}"))
    return requests
