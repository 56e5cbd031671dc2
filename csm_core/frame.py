"""One audio frame from a backbone state: codebook 0, then the depth decoder for 1..31.

Shared by the reference path and the engine, so both run the very same operations.
"""

from __future__ import annotations

import torch

from csm_core.llama import ROW_MULTIPLE
from csm_core.model import CSMModel
from csm_core.sampling import BatchSampler


@torch.inference_mode()
def sample_frames(model: CSMModel, h: torch.Tensor, sampler: BatchSampler, noise: torch.Tensor) -> torch.Tensor:
    """h [b, backbone_dim], noise [b, 32, max_k] (csm_core/sampling.py) -> codes [b, 32] int64.

    The depth decoder's cache is per frame: position 0 holds the backbone state, position i
    the embedding of codebook i-1, and the state at position i predicts codebook i.
    """
    n = model.config.audio_num_codebooks
    b = h.shape[0]
    pad = -b % ROW_MULTIPLE if model.exact else 0
    if pad:  # pad once here rather than in every linear: rows >= b are discarded
        h = torch.cat([h, h.new_zeros(pad, h.shape[1])])
        noise = torch.cat([noise, noise.new_ones(pad, *noise.shape[1:])])
        sampler = sampler.padded(pad)
    c = sampler.sample(model.c0_logits(h), noise[:, 0])
    codes = [c]
    model.depth_step(h, 0)
    for i in range(1, n):
        hd = model.depth_step(model.embed_audio(i - 1, c), i)
        c = sampler.sample(model.codebook_logits(i, hd), noise[:, i])
        codes.append(c)
    return torch.stack(codes, dim=1)[:b]
