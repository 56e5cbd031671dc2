"""The one-request reference path: batch 1, whole utterance, like the original generator.

Every later benchmark and parity check compares against this. It uses slot 0 of the
model's cache and the same model entry points as the engine (csm_core/frame.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csm_core.framing import Prompt
from csm_core.frame import sample_frames
from csm_core.model import CSMModel
from csm_core.sampling import BatchSampler, SamplingParams, frame_noise, seed_key

DEFAULT_PREFILL_CHUNK = 64  # prompt positions per prefill call; the engine uses the same boundaries


@dataclass(frozen=True, slots=True)
class GenerationResult:
    frames: torch.Tensor  # [n, 32] int64, the end-of-utterance frame excluded
    finish_reason: str  # "eos" | "length"
    prompt_frames: int


def check_fits(model: CSMModel, prompt_len: int, max_frames: int) -> None:
    if max_frames < 1:
        raise ValueError("max_frames must be at least 1")
    if prompt_len + max_frames > model.max_seq:
        raise ValueError(
            f"prompt of {prompt_len} positions plus {max_frames} frames exceeds the model's context of "
            f"{model.max_seq} positions: shorten the context or max length"
        )


def prefill_slot(model: CSMModel, slot: int, prompt: Prompt, start: int, end: int) -> torch.Tensor:
    """Prefill absolute positions [start, end) of a slot from a prompt that covers them.
    Returns the last hidden state [1, dim]."""
    dev = model.audio_head.device
    a, b = start - prompt.start, end - prompt.start
    return model.prefill(slot, prompt.tokens[a:b].to(dev), prompt.mask[a:b].to(dev), start)


@torch.inference_mode()
def generate(
    model: CSMModel,
    prompt: Prompt,
    *,
    max_frames: int,
    sampling: SamplingParams = SamplingParams(),
    seed: int = 0,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> GenerationResult:
    check_fits(model, len(prompt), max_frames)
    dev = model.audio_head.device
    key = torch.tensor([seed_key(seed)], device=dev)
    sampler = BatchSampler([sampling], dev)
    n = len(prompt)
    for start in range(0, n, prefill_chunk):
        h = prefill_slot(model, 0, prompt, start, min(start + prefill_chunk, n))
    slot = torch.tensor([0], device=dev)
    frames: list[torch.Tensor] = []
    reason = "length"
    for i in range(max_frames):
        noise = frame_noise(key, torch.tensor([i], device=dev), sampling.effective_top_k)  # [1, 32, k]
        codes = sample_frames(model, h, sampler, noise)  # [1, 32]
        if not codes.any():
            reason = "eos"
            break
        frames.append(codes[0])
        if i + 1 < max_frames:
            pos = n + i
            h = model.decode(slot, codes, torch.tensor([pos], device=dev), [pos + 1])
    out = torch.stack(frames) if frames else torch.zeros(0, model.config.audio_num_codebooks, dtype=torch.long)
    return GenerationResult(out.cpu(), reason, n)


@torch.inference_mode()
def frame_logits(model: CSMModel, prompt: Prompt, frames: torch.Tensor, *,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> torch.Tensor:
    """Every codebook's logits for each of `frames` [T, 32], feeding those frames back instead of the
    model's own choices (teacher forcing), in slot 0 as `generate` does. [T, 32, vocab] float32

    Two models (devices, dtypes, quantizations) compared along the same frames differ by their
    numbers alone: free-running greedy frames part ways at the first near-tie and never meet again."""
    dev = model.audio_head.device
    n = len(prompt)
    for start in range(0, n, prefill_chunk):
        h = prefill_slot(model, 0, prompt, start, min(start + prefill_chunk, n))
    slot = torch.tensor([0], device=dev)
    out = []
    for t, codes in enumerate(frames.to(dev).unsqueeze(1)):  # codes [1, 32]
        logits = [model.c0_logits(h)]
        model.depth_step(h, 0)
        for i in range(1, codes.shape[1]):
            hd = model.depth_step(model.embed_audio(i - 1, codes[:, i - 1]), i)
            logits.append(model.codebook_logits(i, hd))
        out.append(torch.stack(logits, dim=1)[0])  # [32, vocab]
        if t + 1 < len(frames):
            h = model.decode(slot, codes, torch.tensor([n + t], device=dev), [n + t + 1])
    return torch.stack(out).cpu()
