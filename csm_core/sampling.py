"""Per-request top-k / temperature sampling that does not depend on the batch.

Each request owns a `torch.Generator`. At the start of every frame it draws Exponential(1)
noise for all 32 codebooks, `top_k` values each ([32, top_k]). Codebook i samples the
exponential race among the top-k codes: argmax_j(logit_j / T - log(noise_j)), which picks code
j with probability softmax(logits / T)_j over the top k (the original generator's
`argmax(probs / q)` in log space). Only max/argmax reduce across the vocabulary, and those are
exact, so a row's result does not depend on which rows share the batch; rows never share random
draws, so a seeded request yields the same frames alone or among others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csm_core.constants import AUDIO_VOCAB_SIZE, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, MAX_TEMPERATURE, NUM_CODEBOOKS


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        if not (1 <= self.top_k <= AUDIO_VOCAB_SIZE):
            raise ValueError(f"top_k must be in [1, {AUDIO_VOCAB_SIZE}], got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def effective_top_k(self) -> int:
        return 1 if self.greedy else self.top_k


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def draw_frame_noise(generator: torch.Generator, device, top_k: int) -> torch.Tensor:
    """Exponential(1) noise for one frame of one request. [32, top_k] float32"""
    return torch.empty(NUM_CODEBOOKS, top_k, device=device).exponential_(1, generator=generator)


class BatchSampler:
    """Sampling parameters of the rows of one batch, as tensors."""

    cache_mask = True  # keep the top-k column mask between calls (off when tensors change in place)

    def __init__(self, params: list[SamplingParams], device):
        self.top_k = [p.effective_top_k for p in params]
        self.max_k = max(self.top_k)
        temps = [1.0 if p.greedy else p.temperature for p in params]
        self.temperature = torch.tensor(temps, device=device).unsqueeze(1)  # [b, 1]
        self.k = torch.tensor(self.top_k, device=device).unsqueeze(1)  # [b, 1]
        self._outside: torch.Tensor | None = None  # [b, max_k] columns beyond each row's k

    def padded(self, rows: int) -> BatchSampler:
        """This sampler with `rows` extra greedy rows."""
        out = BatchSampler.__new__(BatchSampler)
        out.top_k = self.top_k + [1] * rows
        out.max_k = self.max_k
        out.temperature = torch.cat([self.temperature, self.temperature.new_ones(rows, 1)])
        out.k = torch.cat([self.k, self.k.new_ones(rows, 1)])
        out._outside = None
        return out

    def stack_noise(self, noise: list[torch.Tensor]) -> torch.Tensor:
        """Per-row noise [32, k_i] -> [b, 32, max_k] (padding columns are never chosen)."""
        out = torch.ones(len(noise), NUM_CODEBOOKS, self.max_k, device=noise[0].device)
        for i, n in enumerate(noise):
            out[i, :, : n.shape[1]] = n
        return out

    def sample(self, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """logits [b, vocab] float32, noise [b, >= max_k] -> codes [b] int64"""
        vals, idx = torch.topk(logits / self.temperature, self.max_k, dim=-1)  # [b, max_k], descending
        outside = self._outside
        if outside is None:
            outside = torch.arange(self.max_k, device=logits.device) >= self.k
            if self.cache_mask:
                self._outside = outside
        score = (vals - torch.log(noise[:, : self.max_k])).masked_fill_(outside, float("-inf"))
        return idx.gather(1, score.argmax(dim=-1, keepdim=True)).squeeze(1)
