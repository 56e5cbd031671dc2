"""Llama-3.2 blocks in plain PyTorch with a slot KV cache.

Parameter names follow torchtune (the original CSM checkpoint): `layers.N.attn.{q,k,v,output}_proj`,
`layers.N.mlp.{w1,w2,w3}`, `layers.N.{sa_norm,mlp_norm}.scale`, `norm.scale`.

Two ways to attend:
- exact (CPU default): every linear pads its rows to a multiple of 4 and every slot attends in its
  own call, so a slot's numbers do not depend on which other slots share the batch (CPU GEMM
  kernels pick different reduction orders for different row counts). This is what makes seeded
  requests batch-invariant (tests/test_engine.py, test_batch_invariance_16_staggered_requests).
- batched (CUDA default): one masked SDPA call for all slots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from csm_core.config import LlamaFlavor

ROW_MULTIPLE = 4  # CPU GEMM gives identical rows for any row count that is a multiple of this


class Linear(nn.Linear):
    """nn.Linear that, in exact mode, pads the flattened rows to a multiple of ROW_MULTIPLE."""

    exact: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exact:
            return F.linear(x, self.weight, self.bias)
        return exact_linear(x, self.weight)


def exact_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    n = x.numel() // x.shape[-1]
    pad = -n % ROW_MULTIPLE
    if not pad:
        return F.linear(x, weight)
    lead, k = x.shape[:-1], x.shape[-1]
    rows = torch.cat([x.reshape(-1, k), x.new_zeros(pad, k)])
    return F.linear(rows, weight)[:n].reshape(*lead, weight.shape[0])


def fuse_linears(*linears: nn.Linear) -> torch.Tensor:
    """Concatenate the weights of linears that read the same input into one matrix and make each
    original weight a view into it (names and state dict unchanged, one GEMM instead of several).
    Returns the fused weight [sum(out), in]."""
    fused = torch.cat([m.weight.detach() for m in linears])
    start = 0
    for m in linears:
        n = m.out_features
        m.weight = nn.Parameter(fused[start : start + n], requires_grad=False)
        start += n
    return fused


def _is_fused(fused: torch.Tensor | None, first: nn.Linear) -> bool:
    return fused is not None and fused.data_ptr() == first.weight.data_ptr() and fused.device == first.weight.device


def _linear(x: torch.Tensor, weight: torch.Tensor, exact: bool) -> torch.Tensor:
    return exact_linear(x, weight) if exact else F.linear(x, weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.scale.shape, self.scale, self.eps)  # fp32 math inside, one op


def llama3_inv_freq(flavor: LlamaFlavor) -> torch.Tensor:
    """Rotary frequencies with Llama-3 scaling. [head_dim // 2]"""
    dim = flavor.head_dim
    freqs = 1.0 / (flavor.rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    low_wavelen = flavor.rope_original_max_seq_len / flavor.rope_low_freq_factor
    high_wavelen = flavor.rope_original_max_seq_len / flavor.rope_high_freq_factor
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / flavor.rope_scale_factor)
        else:
            smooth = (flavor.rope_original_max_seq_len / wavelen - flavor.rope_low_freq_factor) / (
                flavor.rope_high_freq_factor - flavor.rope_low_freq_factor
            )
            out.append((1 - smooth) * f / flavor.rope_scale_factor + smooth * f)
    return torch.tensor(out, dtype=torch.float32)


class RotaryEmbedding(nn.Module):
    """Interleaved pairing (x[2i], x[2i+1]), as torchtune and the original checkpoint use."""

    def __init__(self, flavor: LlamaFlavor):
        super().__init__()
        theta = llama3_inv_freq(flavor)
        angles = torch.outer(torch.arange(flavor.max_seq_len, dtype=torch.float32), theta)
        # complex64 [max_seq, head_dim/2]; a plain attribute, so module.to(dtype) never casts it
        self.cis = torch.polar(torch.ones_like(angles), angles)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [b, s, heads, head_dim]; pos [b, s] absolute positions. Pairs (x[2i], x[2i+1]) are
        rotated as the complex numbers x[2i] + i x[2i+1]."""
        if self.cis.device != x.device:
            self.cis = self.cis.to(x.device)
        cis = self.cis[pos].unsqueeze(2)  # [b, s, 1, head_dim/2]
        x32 = x if x.dtype == torch.float32 else x.float()
        out = torch.view_as_real(torch.view_as_complex(x32.unflatten(-1, (-1, 2))) * cis).flatten(-2)
        return out if out.dtype == x.dtype else out.type_as(x)


class SlotKVCache(nn.Module):
    """Keys and values of one layer for every slot. [max_slots, kv_heads, max_seq, head_dim]"""

    def __init__(self, max_slots: int, kv_heads: int, max_seq: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (max_slots, kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)


class Attention(nn.Module):
    def __init__(self, flavor: LlamaFlavor, rope: RotaryEmbedding):
        super().__init__()
        self.num_heads = flavor.num_heads
        self.num_kv_heads = flavor.num_kv_heads
        self.head_dim = flavor.head_dim
        d = flavor.embed_dim
        self.q_proj = Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.output_proj = Linear(self.num_heads * self.head_dim, d, bias=False)
        self.rope = (rope,)  # shared, kept out of the state dict and module tree
        self.wqkv: torch.Tensor | None = None  # fused q/k/v weight, see fuse_linears
        self.cache: SlotKVCache | None = None
        self.exact = False
        # Every row at the same position (the depth decoder): attend with batched matmuls,
        # which are row-invariant, instead of per-slot calls.
        self.uniform = False

    def forward(self, x: torch.Tensor, slots: torch.Tensor, pos: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """x [b, s, dim] for b slots; pos [b, s] positions written into the cache; lengths: per row,
        the number of cache positions the row's last query may see (its last pos + 1)."""
        b, s, _ = x.shape
        if not _is_fused(self.wqkv, self.q_proj):
            self.wqkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)
        h, kv = self.num_heads, self.num_kv_heads
        qkv = _linear(x, self.wqkv, self.exact).view(b, s, h + 2 * kv, self.head_dim)
        qk = self.rope[0](qkv[:, :, : h + kv], pos)  # q and k heads rotated together
        q, k, v = qk[:, :, :h], qk[:, :, h:], qkv[:, :, h + kv :]
        cache = self.cache
        if cache.k.dtype != k.dtype:
            k, v = k.to(cache.k.dtype), v.to(cache.k.dtype)
        if self.uniform:  # rows 0..b-1, all at the same positions
            p0 = lengths[0] - s
            cache.k[:b, :, p0 : p0 + s] = k.transpose(1, 2)
            cache.v[:b, :, p0 : p0 + s] = v.transpose(1, 2)
        else:
            rows = slots.unsqueeze(1).expand(b, s)  # [b, s]
            cache.k[rows, :, pos] = k  # [b, s, kv_heads, head_dim] at (slot, pos)
            cache.v[rows, :, pos] = v
        q = q.transpose(1, 2)  # [b, heads, s, head_dim]
        if self.uniform:
            out = self._attend_uniform(q, slots, lengths[0])
        elif self.exact or b == 1:
            out = torch.cat(
                [self._attend_one(q[i : i + 1], int(slots[i]), pos[i], lengths[i]) for i in range(b)]
            )
        else:
            out = self._attend_batched(q, slots, pos, max(lengths))
        return self.output_proj(out.transpose(1, 2).reshape(b, s, -1))

    def _attend_one(self, q: torch.Tensor, slot: int, pos: torch.Tensor, length: int) -> torch.Tensor:
        k = self.cache.k[slot : slot + 1, :, :length]  # [1, kv_heads, length, head_dim]
        v = self.cache.v[slot : slot + 1, :, :length]
        mask = None
        if q.shape[2] > 1:  # a prefill chunk: query i sees keys <= pos[i]
            mask = torch.arange(length, device=q.device)[None, :] <= pos[:, None]  # [s, length]
        return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, enable_gqa=True)

    def _attend_uniform(self, q: torch.Tensor, slots: torch.Tensor, length: int) -> torch.Tensor:
        b, _, s, hd = q.shape
        kv = self.num_kv_heads
        qg = q.view(b, kv, -1, s, hd)  # [b, kv_heads, groups, s, hd]
        k = self.cache.k[:b, :, :length].unsqueeze(2)  # [b, kv_heads, 1, length, hd]
        v = self.cache.v[:b, :, :length].unsqueeze(2)
        scores = torch.matmul(qg, k.transpose(-1, -2)) * (hd**-0.5)  # [b, kv_heads, groups, s, length]
        if s > 1:
            scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(length - s), float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v).view(b, -1, s, hd)

    def _attend_batched(self, q: torch.Tensor, slots: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
        k = self.cache.k.index_select(0, slots)[:, :, :length]  # [b, kv_heads, length, head_dim]
        v = self.cache.v.index_select(0, slots)[:, :, :length]
        mask = torch.arange(length, device=q.device)[None, None, :] <= pos[:, :, None]  # [b, s, length]
        return F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask.unsqueeze(1), enable_gqa=True
        )


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False)  # gate
        self.w2 = Linear(hidden, dim, bias=False)  # down
        self.w3 = Linear(dim, hidden, bias=False)  # up
        self.w13: torch.Tensor | None = None  # fused gate/up weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_fused(self.w13, self.w1):
            self.w13 = fuse_linears(self.w1, self.w3)
        gate, up = _linear(x, self.w13, self.w1.exact).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, flavor: LlamaFlavor, rope: RotaryEmbedding):
        super().__init__()
        self.sa_norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        self.attn = Attention(flavor, rope)
        self.mlp_norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        self.mlp = MLP(flavor.embed_dim, flavor.intermediate_dim)

    def forward(self, x, slots, pos, lengths):
        h = x + self.attn(self.sa_norm(x), slots, pos, lengths)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """A Llama stack without token embeddings or output head (CSM feeds embeddings in)."""

    def __init__(self, flavor: LlamaFlavor, uniform_positions: bool = False):
        super().__init__()
        self.flavor = flavor
        self.rope = RotaryEmbedding(flavor)
        self.layers = nn.ModuleList([Block(flavor, self.rope) for _ in range(flavor.num_layers)])
        self.norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        for layer in self.layers:
            layer.attn.uniform = uniform_positions

    def setup_cache(self, max_slots: int, max_seq: int | None = None) -> None:
        f = self.flavor
        seq = min(max_seq or f.max_seq_len, f.max_seq_len)
        p = self.norm.scale
        for layer in self.layers:
            layer.attn.cache = SlotKVCache(max_slots, f.num_kv_heads, seq, f.head_dim, p.dtype, p.device)

    @property
    def cache_shape(self) -> tuple[int, int]:
        """(max_slots, max_seq) of the allocated cache."""
        k = self.layers[0].attn.cache.k
        return k.shape[0], k.shape[2]

    def set_exact(self, exact: bool) -> None:
        for m in self.modules():
            if isinstance(m, (Linear, Attention)):
                m.exact = exact

    def forward(self, x: torch.Tensor, slots: torch.Tensor, pos: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """x [b, s, dim] -> normed hidden states [b, s, dim]."""
        for layer in self.layers:
            x = layer(x, slots, pos, lengths)
        return self.norm(x)
