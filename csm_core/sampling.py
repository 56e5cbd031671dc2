"""Per-request top-k / temperature sampling that does not depend on the batch.

Each request owns a `torch.Generator`. At the start of every frame it draws the exponential
noise for all 32 codebooks at once ([32, vocab]); codebook i then samples
argmax(softmax(logits / T) / noise[i]) (the exponential-race trick of the original
generator, no host sync). Rows never share random draws, so a seeded request yields the same
frame alone or among others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csm_core.constants import AUDIO_VOCAB_SIZE, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, NUM_CODEBOOKS


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 5.0):
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not (1 <= self.top_k <= AUDIO_VOCAB_SIZE):
            raise ValueError(f"top_k must be in [1, {AUDIO_VOCAB_SIZE}], got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def draw_frame_noise(generator: torch.Generator, device, vocab: int = AUDIO_VOCAB_SIZE) -> torch.Tensor:
    """Exponential(1) noise for one frame of one request. [32, vocab] float32"""
    return torch.empty(NUM_CODEBOOKS, vocab, device=device).exponential_(1, generator=generator)


class BatchSampler:
    """Sampling parameters of the rows of one batch, as tensors, built once per batch change."""

    def __init__(self, params: list[SamplingParams], device):
        self.top_k = [1 if p.greedy else p.top_k for p in params]
        self.max_k = max(self.top_k)
        temps = [1.0 if p.greedy else p.temperature for p in params]
        self.temperature = torch.tensor(temps, device=device).unsqueeze(1)  # [b, 1]
        self.kth = torch.tensor([k - 1 for k in self.top_k], device=device).unsqueeze(1)  # [b, 1]

    def sample(self, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """logits [b, vocab] float32, noise [b, vocab] -> codes [b] int64"""
        scaled = logits / self.temperature
        top = torch.topk(scaled, self.max_k, dim=-1).values  # [b, max_k]
        threshold = top.gather(1, self.kth)  # [b, 1]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        return torch.argmax(probs / noise, dim=-1)
