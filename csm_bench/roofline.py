"""The roofline of one decode step: what it must read and compute, and the least time that takes.

One engine step makes one frame (80 ms of audio) for each of `batch` streams: one backbone position
per stream, then codebook 0 and the depth decoder's 32 positions (csm_core/frame.py). The model:

- weights: every weight the step multiplies by is read from memory once per forward, whatever the
  batch (the batch's rows share each tile): the backbone's layers and final norm, codebook 0's
  head, 32 times the projection and the depth decoder (layers and final norm: one forward per
  depth position), and the 31 audio heads (one each). Embedding tables are gathered, not read
  whole: each stream reads 33 backbone rows (32 audio + the masked text one) and 31 depth rows.
- KV: each stream's backbone attention reads its keys and values, rounded up to FlexAttention's
  128-key blocks (csm_core/llama.py `DecodeMask`), in every layer; the depth decoder's attention
  reads 1, 2, ... 32 positions (sum 528) in each of its layers.
- sampling: per stream, 32 x vocab fp32 noise read, logits written and read again (3 x 4 bytes).
- FLOPs: 2 per weight multiplied per stream (matmuls; norms and gathers not counted), plus
  attention: 4 x heads x head_dim per key per layer (QK^T and PV) over the live keys.

time >= max(bytes / memory bandwidth, FLOPs / matmul peak). What it leaves out: activations
between kernels (small: [batch, dim] per layer), L2 reuse across the depth decoder's 32 passes
(its 222 MB of bf16 weights do not fit the H200's 50 MB L2), launch gaps and the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from csm_core.config import LlamaFlavor, ModelConfig
from csm_core.constants import FRAME_MS, NUM_CODEBOOKS

FLEX_BLOCK = 128  # csm_core.llama.FLEX_BLOCK, kept here so this module needs no torch
SAMPLING_BYTES_PER_LOGIT = 3 * 4  # fp32 noise read, logits written, logits read


@dataclass(frozen=True)
class Peak:
    name: str
    bytes_per_s: float
    flops_per_s: float  # dense bf16 matmul
    source: str


# Datasheet peaks (dense, no sparsity). HOPPER machines here measured ~790 TFLOP/s of bf16 matmul.
PEAKS = {
    "H200": Peak("H200", 4.8e12, 989e12, "NVIDIA H200 SXM datasheet: 4.8 TB/s HBM3e, 989 TFLOP/s dense BF16"),
    "H100": Peak("H100", 3.35e12, 989e12, "NVIDIA H100 SXM datasheet: 3.35 TB/s HBM3, 989 TFLOP/s dense BF16"),
}


def peak_for(device_name: str) -> Peak | None:
    """The datasheet peak of a device name such as "NVIDIA H200"; None when unknown."""
    return next((p for key, p in PEAKS.items() if key in device_name.upper()), None)


def _layer_matmul_params(f: LlamaFlavor) -> int:
    qkv = f.embed_dim * (f.num_heads + 2 * f.num_kv_heads) * f.head_dim
    out = f.num_heads * f.head_dim * f.embed_dim
    return qkv + out + 3 * f.embed_dim * f.intermediate_dim


def _stack_params(f: LlamaFlavor) -> tuple[int, int]:
    """(matmul weights, norm weights) of one forward through a stack."""
    return f.num_layers * _layer_matmul_params(f), (2 * f.num_layers + 1) * f.embed_dim


def _kv_per_key(f: LlamaFlavor, elt: int) -> int:
    return f.num_layers * 2 * f.num_kv_heads * f.head_dim * elt  # K and V, every layer


@dataclass(frozen=True)
class StepCost:
    batch: int
    weight_bytes: int
    kv_bytes: int
    other_bytes: int  # embedding rows and sampling
    flops: int

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.other_bytes


def step_weights(config: ModelConfig) -> tuple[int, int]:
    """(weights read per step, of which matmul weights): parameter counts, multiplicity included."""
    b, d, v = config.backbone, config.decoder, config.audio_vocab_size
    bb_mm, bb_norm = _stack_params(b)
    dec_mm, dec_norm = _stack_params(d)
    depth_mm = NUM_CODEBOOKS * (b.embed_dim * d.embed_dim + dec_mm)  # projection + stack, per position
    heads = b.embed_dim * v + (NUM_CODEBOOKS - 1) * d.embed_dim * v
    matmul = bb_mm + depth_mm + heads
    return matmul + bb_norm + NUM_CODEBOOKS * dec_norm, matmul


def step_cost(config: ModelConfig, batch: int, context: int, weight_elt: float = 2, kv_elt: int = 2,
              act_elt: int = 2) -> StepCost:
    """One decode step of `batch` streams, each attending over `context` backbone keys (its own
    position included). weight_elt: bytes per weight (2 bf16, 1 int8/float8, 4 fp32)."""
    b, d, v = config.backbone, config.decoder, config.audio_vocab_size
    weights, matmul = step_weights(config)
    blocks = math.ceil(context / FLEX_BLOCK) * FLEX_BLOCK
    depth_keys = NUM_CODEBOOKS * (NUM_CODEBOOKS + 1) // 2  # 1 + 2 + ... + 32
    kv = batch * (blocks * _kv_per_key(b, kv_elt) + depth_keys * _kv_per_key(d, kv_elt))
    embeds = ((NUM_CODEBOOKS + 1) * b.embed_dim + (NUM_CODEBOOKS - 1) * d.embed_dim) * act_elt
    other = batch * (embeds + NUM_CODEBOOKS * v * SAMPLING_BYTES_PER_LOGIT)
    attention = 4 * (b.num_layers * b.num_heads * b.head_dim * context
                     + d.num_layers * d.num_heads * d.head_dim * depth_keys)
    return StepCost(batch, int(weights * weight_elt), kv, other, batch * (2 * matmul + attention))


def achieved(cost: StepCost, seconds: float, peak: Peak | None) -> dict:
    """What a measured step time means against the roofline: GB/s, TFLOP/s, the roofline's time,
    the fraction of it reached (roofline / measured), what bounds it, and audio seconds per second."""
    out = {"ms": round(seconds * 1e3, 4), "gb_s": round(cost.bytes / seconds / 1e9, 1),
           "tflop_s": round(cost.flops / seconds / 1e12, 2),
           "audio_s_per_s": round(cost.batch * FRAME_MS / 1e3 / seconds, 1)}
    if peak is not None:
        t_mem, t_flops = cost.bytes / peak.bytes_per_s, cost.flops / peak.flops_per_s
        out.update(roofline_ms=round(max(t_mem, t_flops) * 1e3, 4), of_roofline=round(max(t_mem, t_flops) / seconds, 3),
                   bound="memory" if t_mem >= t_flops else "compute")
    return out
