"""The voice registry's AudioEncoder on a running engine: resample to 24 kHz, Mimi-encode.

Encoding runs on one thread of its own, niced like the engine's context-audio thread, so a
voice being created never takes the CPU from running streams, and creations queue behind
each other instead of encoding at once. Mimi's encoder keeps no streaming state (only the
decoder side streams, through its own module copies), so it runs beside the engine's threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from csm_core.audio_io import resample
from csm_core.constants import SAMPLE_RATE
from csm_core.mimi import MimiCodec
from server.engine.threads import BACKGROUND_NICE, set_up_thread
from server.voices.config import VoicesConfig
from server.voices.registry import Clip, VoiceLimits, VoiceRegistry
from server.voices.store import VoiceStore

if TYPE_CHECKING:
    from server.engine.engine import Engine

_FINGERPRINT_VALUES = 4096  # values sampled from each end of every weight tensor


def weights_fingerprint(module: torch.nn.Module) -> str:
    """16 hex digits over the names, shapes and sampled values of every tensor in the state
    dict: equal for the same weights on any device, different for other weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:_FINGERPRINT_VALUES], flat[-_FINGERPRINT_VALUES:]]).to("cpu", torch.float32)
        digest.update(f"{name}:{list(tensor.shape)}:".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


class MimiVoiceEncoder:
    def __init__(self, mimi: MimiCodec, torch_threads: int | None = None):
        self._mimi = mimi
        self.codec = f"mimi:{weights_fingerprint(mimi.model)}"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csm-voice-encode",
                                        initializer=set_up_thread, initargs=(torch_threads, BACKGROUND_NICE))

    def encode(self, clips: Sequence[Clip]) -> list[np.ndarray]:
        """Codes int16 [32, frames] per clip, from one batched Mimi call (blocks until done)."""
        return self._pool.submit(self._encode, list(clips)).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _encode(self, clips: list[Clip]) -> list[np.ndarray]:
        waves = [resample(torch.from_numpy(c.samples).float(), c.sample_rate, SAMPLE_RATE) for c in clips]
        codes = self._mimi.encode(waves)  # long [32, frames] each
        return [c.to("cpu", torch.int16).numpy() for c in codes]


def open_registry(engine: Engine, config: VoicesConfig) -> VoiceRegistry:
    """csm-serve's registry: the engine's Mimi and tokenizer, limits from the engine's."""
    parts = engine.voice_parts()
    encoder = MimiVoiceEncoder(parts.codec, parts.torch_threads)
    limits = VoiceLimits.for_engine(engine.info().limits, config)
    return VoiceRegistry(VoiceStore(config.path), limits, encoder, parts.tokenizer)
