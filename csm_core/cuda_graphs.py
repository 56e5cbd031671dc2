"""CUDA graphs for the hot loop: codebook 0 + the 31 depth-decoder steps of one frame.

One graph per batch bucket (1, 2, 4, 8, ...), captured once; a step copies its rows into the
bucket's static inputs (padding rows are harmless: greedy, zero state) and replays the graph.
Sampling inside the graph takes its per-row parameters from tensors and ranks the whole
vocabulary, so one graph serves every top-k. CUDA only; on CPU the eager path runs.
"""

from __future__ import annotations

import torch

from csm_core.constants import AUDIO_VOCAB_SIZE, NUM_CODEBOOKS
from csm_core.frame import sample_frames
from csm_core.model import CSMModel
from csm_core.sampling import BatchSampler


class _StaticSampler(BatchSampler):
    """BatchSampler whose tensors are fixed buffers of one bucket (filled before each replay)."""

    cache_mask = False  # k changes in place before every replay

    def __init__(self, rows: int, device):
        self._outside = None
        self.max_k = AUDIO_VOCAB_SIZE
        self.temperature = torch.ones(rows, 1, device=device)
        self.k = torch.ones(rows, 1, dtype=torch.long, device=device)


class _Bucket:
    def __init__(self, model: CSMModel, rows: int, pool):
        dev = model.audio_head.device
        dim = model.config.backbone.embed_dim
        self.rows = rows
        self.h = torch.zeros(rows, dim, device=dev, dtype=model.audio_head.dtype)  # [rows, dim]
        self.noise = torch.ones(rows, NUM_CODEBOOKS, AUDIO_VOCAB_SIZE, device=dev)  # [rows, 32, vocab] (max top-k)
        self.sampler = _StaticSampler(rows, dev)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (allocator, kernels' lazy init)
                sample_frames(model, self.h, self.sampler, self.noise)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.codes = sample_frames(model, self.h, self.sampler, self.noise)  # [rows, 32]

    def run(self, h: torch.Tensor, sampler: BatchSampler, noise: torch.Tensor) -> torch.Tensor:
        b = h.shape[0]
        self.h[:b].copy_(h)
        self.h[b:].zero_()
        self.noise.fill_(1.0)
        self.noise[:b, :, : noise.shape[2]].copy_(noise)
        self.sampler.temperature[:b].copy_(sampler.temperature)
        self.sampler.temperature[b:].fill_(1.0)
        self.sampler.k[:b].copy_(sampler.k)
        self.sampler.k[b:].fill_(1)
        self.graph.replay()
        return self.codes[:b].clone()


class GraphedFrameSampler:
    """Drop-in for `sample_frames` on CUDA: replays a captured graph of the right bucket."""

    def __init__(self, model: CSMModel, max_rows: int):
        if model.audio_head.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.model = model
        pool = torch.cuda.graph_pool_handle()
        sizes, n = [], 1
        while n < max_rows:
            sizes.append(n)
            n *= 2
        sizes.append(max_rows)
        with torch.inference_mode():
            self.buckets = [_Bucket(model, s, pool) for s in sizes]

    def __call__(self, model: CSMModel, h: torch.Tensor, sampler: BatchSampler, noise: torch.Tensor) -> torch.Tensor:
        bucket = next(b for b in self.buckets if b.rows >= h.shape[0])
        return bucket.run(h, sampler, noise)
