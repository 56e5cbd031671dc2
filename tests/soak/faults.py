"""Faults injected into the real engine's parts for the soak suite: each wrapper passes calls
through to the real part and raises, at a fixed rate from a seeded generator, where that stage
would fail. Nothing here replaces a part: it only makes real parts fail on cue."""

from __future__ import annotations

import random
import threading
from collections import Counter


class FaultPlan:
    """Which calls fail: each stage draws from its own seeded generator."""

    def __init__(self, rates: dict[str, float], seed: int = 1234):
        self.rates = rates
        self._rngs = {stage: random.Random(f"{seed}-{stage}") for stage in rates}
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.armed = True

    def maybe_fail(self, stage: str) -> None:
        with self._lock:
            if not self.armed or self._rngs[stage].random() >= self.rates[stage]:
                return
            self.injected[stage] += 1
        raise RuntimeError(f"injected {stage} fault")


class FaultyCodec:
    """Mimi: context encoding (prep thread) and streaming decode (Mimi thread) fail on cue."""

    def __init__(self, codec, plan: FaultPlan):
        self._codec, self._plan = codec, plan

    @property
    def device(self):
        return self._codec.device

    @property
    def model(self):
        return self._codec.model

    def encode(self, waves):
        self._plan.maybe_fail("prep")
        return self._codec.encode(waves)

    def stream_decoder(self, slots: int):
        return FaultyStreamDecoder(self._codec.stream_decoder(slots), self._plan)


class FaultyStreamDecoder:
    def __init__(self, decoder, plan: FaultPlan):
        self._decoder, self._plan = decoder, plan

    def reset(self, rows):
        self._decoder.reset(rows)

    def decode(self, codes, active, rows=None):
        self._plan.maybe_fail("mimi")
        return self._decoder.decode(codes, active, rows)

    def close(self):
        self._decoder.close()


class FaultyWatermarker:
    """The watermark (output workers) fails on cue; each replica draws from the same plan."""

    def __init__(self, watermarker, plan: FaultPlan):
        self._watermarker, self._plan = watermarker, plan

    def apply(self, pcm):
        self._plan.maybe_fail("watermark")
        return self._watermarker.apply(pcm)

    def apply_batch(self, pcms):
        self._plan.maybe_fail("watermark")
        return self._watermarker.apply_batch(pcms)

    def replica(self):
        return FaultyWatermarker(self._watermarker.replica(), self._plan)


def faulty_prefill(prefill, plan: FaultPlan):
    """The model step for one slot (a prefill chunk) fails on cue."""

    def prefill_slot(model, slot, prompt, start, end):
        plan.maybe_fail("model step")
        return prefill(model, slot, prompt, start, end)

    return prefill_slot


class FaultyEncoder:
    """The output encoder (the servicer, on the event loop) fails on cue."""

    def __init__(self, encoder, plan: FaultPlan):
        self._encoder, self._plan = encoder, plan
        self.cpu_bound = getattr(encoder, "cpu_bound", False)

    def encode(self, pcm):
        self._plan.maybe_fail("encoder")
        return self._encoder.encode(pcm)

    def flush(self):
        return self._encoder.flush()
