"""Per-request top-k / temperature sampling that does not depend on the batch.

Each request has a seed. For its frame number n it draws Exponential(1) noise for all 32
codebooks, `top_k` values each ([32, top_k]). Codebook i samples the exponential race among the
top-k codes: argmax_j(logit_j / T - log(noise_j)), which picks code j with probability
softmax(logits / T)_j over the top k (the original generator's `argmax(probs / q)` in log space).
Only max/argmax reduce across the vocabulary, and those are exact, so a row's result does not
depend on which rows share the batch.

The noise is counter-based (`frame_noise`): value (codebook i, column j) of frame n of seed s is a
hash of (s, n, i, j) (splitmix64's finaliser), so every row of a step draws its noise in one set
of kernels whatever the batch, rows never share draws, a column's value does not depend on how
many columns are drawn, and a seeded request yields the same frames alone or among others, on
any device, before and after preemption (its state is just its seed and frame number).
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


_NOISE_STRIDE = 4096  # the counter's column stride: more columns than any top-k (AUDIO_VOCAB_SIZE)
_BITS = 24  # float32's mantissa: uniform values (m + 0.5) / 2**24, never 0 or 1


def _int64(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _int64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = _int64(0xBF58476D1CE4E5B9), _int64(0x94D049BB133111EB)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors: products wrap as uint64 would, and each right
    shift is made logical by masking off the copies of the sign bit."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def seed_key(seed: int) -> int:
    """A request's seed (0 <= seed < 2**64) as the int64 that `frame_noise` takes."""
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"a seed must be in [0, 2**64), got {seed}")
    return _int64(seed)


def frame_noise(seeds: torch.Tensor, frames: torch.Tensor, top_k: int) -> torch.Tensor:
    """Exponential(1) noise for frame frames[r] of the request seeded seeds[r] (`seed_key`), for
    every row r at once: int64 [b] each -> float32 [b, 32, top_k], on their device. Row r's
    values depend only on (seeds[r], frames[r]) and a column's only on its own index."""
    device = seeds.device
    stream = _mix(_mix(seeds) + frames * _GOLDEN)  # [b]
    cells = (torch.arange(NUM_CODEBOOKS, device=device)[:, None] * _NOISE_STRIDE
             + torch.arange(top_k, device=device) + 1)  # [32, top_k]
    x = _mix(stream[:, None, None] + cells * _GOLDEN)  # [b, 32, top_k]
    uniform = (((x >> (64 - _BITS)) & ((1 << _BITS) - 1)).float() + 0.5) * (1.0 / (1 << _BITS))
    return -torch.log(uniform)


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
