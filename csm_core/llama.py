"""Llama-3.2 blocks in plain PyTorch with a slot KV cache.

Parameter names follow torchtune (the original CSM checkpoint): `layers.N.attn.{q,k,v,output}_proj`,
`layers.N.mlp.{w1,w2,w3}`, `layers.N.{sa_norm,mlp_norm}.scale`, `norm.scale`.

Attention over the slot cache (the backbone), one of two kinds:
- rows (CPU): every slot attends in its own SDPA call over the keys it has (`cache[slot, :, :length]`,
  a view). With exact mode on (the CPU default), every linear also pads its rows to a multiple of 4:
  CPU GEMM kernels pick different reduction orders for different row counts, and with both a slot's
  numbers do not depend on which other slots share the batch. This is what makes seeded requests
  batch-invariant (tests/test_engine.py, test_batch_invariance_16_staggered_requests).
- flex (CUDA): a decode step is one FlexAttention call over the whole cache, whose block mask holds
  each slot's live key blocks (`DecodeMask`): the kernel reads only those blocks (bytes ∝ the sum of
  the slots' lengths), copies no cache rows and needs no host-side lengths, so the step has fixed
  shapes and is captured in a CUDA graph. A prefill chunk (one slot) is one SDPA call with a
  bottom-right causal mask over the slot's live keys (the flash kernel on CUDA in bf16/fp16).
The depth decoder's rows all sit at the same position (uniform): batched matmuls over its per-frame
cache, which are row-invariant.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from csm_core.config import LlamaFlavor

def _row_multiple() -> int:
    """The smallest row count m such that a CPU GEMM gives each row the same result whenever the
    rows are padded to a multiple of m, found on this CPU once: MKL's blocking depends on the
    instruction set (4 rows sufficed on AVX2 machines; AVX-512 ones need 16). Exact mode pads to it."""
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(1024, 512, generator=g), torch.randn(64, 512, generator=g)
    with torch.inference_mode():
        full = F.linear(x, w)
        for m in (4, 8, 16, 32, 64):
            if all(torch.equal(F.linear(torch.cat([x[:n], x.new_zeros(-n % m, 512)]), w)[:n], full[:n])
                   for n in (1, 2, 3, 5, 7, 9, 13, 17, 31, 33)):
                return m
    return 64


ROW_MULTIPLE = _row_multiple()  # CPU GEMM gives identical rows for any row count that is a multiple of this
ATTENTION_KINDS = ("rows", "flex")
FLEX_BLOCK = 128  # keys per FlexAttention block: a slot reads its length rounded up to this


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

    def forward(self, x: torch.Tensor, pos: torch.Tensor | int) -> torch.Tensor:
        """x [b, s, heads, head_dim]; pos [b, s] absolute positions, or an int: every row at positions
        pos..pos+s-1. Pairs (x[2i], x[2i+1]) are rotated as the complex numbers x[2i] + i x[2i+1]."""
        if self.cis.device != x.device:
            self.cis = self.cis.to(x.device)
        if isinstance(pos, int):
            cis = self.cis[pos : pos + x.shape[1]].unsqueeze(1)  # [s, 1, head_dim/2], broadcast over rows
        else:
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


class DecodeMask:
    """The FlexAttention block mask of a decode step: one query per cache row, which sees that row's
    keys 0..length-1 (length 0 for rows not decoding: the kernel skips them).

    Its buffers live as long as the cache, so every step (and a CUDA graph captured once) reads the
    same tensors: `update` rewrites them in place. The compiled kernel guards on mask_mod's code,
    not on the closure, so a new cache (a new engine) reuses it."""

    def __init__(self, rows: int, max_seq: int, device: torch.device):
        self.max_seq = max_seq
        self.lengths = torch.zeros(rows, dtype=torch.int32, device=device)  # [rows] keys each row's query sees
        blocks = -(-max_seq // FLEX_BLOCK)
        # [rows, 1, 1, blocks]: a row's live blocks are its first ones, in order
        self.block_ids = torch.arange(blocks, dtype=torch.int32, device=device).repeat(rows, 1, 1, 1)
        lengths = self.lengths

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx < lengths[b]

        self.mask_mod = mask_mod

    def update(self, slots: torch.Tensor, positions: torch.Tensor) -> BlockMask:
        """slots [b] decode at positions [b] (each writes its key there first): the mask for the step."""
        self.lengths.zero_()
        self.lengths[slots] = (positions + 1).to(torch.int32)
        num_blocks = (self.lengths + FLEX_BLOCK - 1) // FLEX_BLOCK  # [rows]
        return BlockMask.from_kv_blocks(
            num_blocks.view(-1, 1, 1), self.block_ids, BLOCK_SIZE=FLEX_BLOCK, mask_mod=self.mask_mod,
            seq_lengths=(1, self.max_seq), compute_q_blocks=False,
        )


@functools.cache
def _compiled_flex_attention():
    # Fixed shapes (every cache row, one query each): one compile per cache shape and dtype.
    return torch.compile(flex_attention, fullgraph=True, dynamic=False)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """FlexAttention, compiled to its fused kernel on CUDA; elsewhere its eager reference (which
    computes every score and masks them: a check of the masks, not a fast path)."""
    fn = _compiled_flex_attention() if q.device.type == "cuda" else flex_attention
    return fn(q, k, v, block_mask=block_mask, enable_gqa=True)


@dataclass(slots=True)
class AttentionBatch:
    """What every layer's attention needs to know about one forward: built once, read by each layer."""

    pos: torch.Tensor | int  # [b, s] positions written and attended from; an int: rows 0..b-1 at pos..pos+s-1
    slots: torch.Tensor | None = None  # [b] cache rows (None with an int pos)
    rows: list[int] | None = None  # host ints for per-row kernels: the cache rows, and the keys
    lengths: list[int] | None = None  # each row's last query sees (its last position + 1)
    block_mask: BlockMask | None = None  # flex decode: every cache row's live key blocks


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
        self.wqkv: torch.Tensor | None = None  # fused q/k/v weight, see fused_weight
        self.cache: SlotKVCache | None = None
        self.exact = False
        self.flex = False  # attention kind: flex, else rows (see the module docstring)
        # Every row at the same position (the depth decoder): attend with batched matmuls,
        # which are row-invariant, instead of per-slot calls.
        self.uniform = False

    def fused_weight(self) -> torch.Tensor:
        """q, k and v in one matrix [(heads + 2 * kv_heads) * head_dim, dim] (see fuse_linears). Once
        the separate projections are dropped (csm_core/quantize.py), it is the only copy."""
        if self.q_proj is not None and not _is_fused(self.wqkv, self.q_proj):
            self.wqkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)
        return self.wqkv

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        """x [b, s, dim] for the b rows of `batch`, at its positions."""
        b, s, _ = x.shape
        h, kv = self.num_heads, self.num_kv_heads
        qkv = _linear(x, self.fused_weight(), self.exact).view(b, s, h + 2 * kv, self.head_dim)
        qk = self.rope[0](qkv[:, :, : h + kv], batch.pos)  # q and k heads rotated together
        q, k, v = qk[:, :, :h], qk[:, :, h:], qkv[:, :, h + kv :]
        cache = self.cache
        if cache.k.dtype != k.dtype:
            k, v = k.to(cache.k.dtype), v.to(cache.k.dtype)
        if self.uniform:  # rows 0..b-1, all at positions pos..pos+s-1
            cache.k[:b, :, batch.pos : batch.pos + s] = k.transpose(1, 2)
            cache.v[:b, :, batch.pos : batch.pos + s] = v.transpose(1, 2)
        else:
            rows = batch.slots.unsqueeze(1).expand(b, s)  # [b, s]
            cache.k[rows, :, batch.pos] = k  # [b, s, kv_heads, head_dim] at (slot, pos)
            cache.v[rows, :, batch.pos] = v
        q = q.transpose(1, 2)  # [b, heads, s, head_dim]
        if self.uniform:
            out = self._attend_uniform(q, batch.pos + s)
        elif not self.flex:
            out = torch.cat([self._attend_row(q[i : i + 1], batch.rows[i], batch.pos[i], batch.lengths[i])
                             for i in range(b)])
        elif batch.block_mask is not None:
            out = self._attend_flex(q, batch.slots, batch.block_mask)
        else:
            out = self._attend_chunk(q, batch.rows[0], batch.lengths[0])
        return self.output_proj(out.transpose(1, 2).reshape(b, s, -1))

    def _attend_row(self, q: torch.Tensor, slot: int, pos: torch.Tensor, length: int) -> torch.Tensor:
        k = self.cache.k[slot : slot + 1, :, :length]  # [1, kv_heads, length, head_dim]
        v = self.cache.v[slot : slot + 1, :, :length]
        mask = None
        if q.shape[2] > 1:  # a prefill chunk: query i sees keys <= pos[i]
            mask = torch.arange(length, device=q.device)[None, :] <= pos[:, None]  # [s, length]
        return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, enable_gqa=True)

    def _attend_uniform(self, q: torch.Tensor, length: int) -> torch.Tensor:
        b, _, s, hd = q.shape
        kv = self.num_kv_heads
        qg = q.view(b, kv, -1, s, hd)  # [b, kv_heads, groups, s, hd]
        k = self.cache.k[:b, :, :length].unsqueeze(2)  # [b, kv_heads, 1, length, hd]
        v = self.cache.v[:b, :, :length].unsqueeze(2)
        scores = torch.matmul(qg, k.transpose(-1, -2)) * (hd**-0.5)  # [b, kv_heads, groups, s, length]
        if s > 1:
            scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(length - s), float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v).view(b, -1, s, hd)

    def _attend_flex(self, q: torch.Tensor, slots: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
        """q [b, heads, 1, head_dim] of slots [b] -> [b, heads, 1, head_dim]. The kernel runs over every
        cache row (fixed shape); rows not decoding have no live blocks and cost nothing."""
        cache = self.cache
        q_rows = q.new_zeros(cache.k.shape[0], *q.shape[1:])  # [cache rows, heads, 1, head_dim]
        q_rows[slots] = q
        return flex_attend(q_rows, cache.k, cache.v, block_mask)[slots]

    def _attend_chunk(self, q: torch.Tensor, slot: int, length: int) -> torch.Tensor:
        """One slot's prefill chunk q [1, heads, s, head_dim] at positions length-s..length-1."""
        k = self.cache.k[slot : slot + 1, :, :length]  # [1, kv_heads, length, head_dim], a view
        v = self.cache.v[slot : slot + 1, :, :length]
        mask = causal_lower_right(q.shape[2], length)  # query i sees keys <= length - s + i
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False)  # gate
        self.w2 = Linear(hidden, dim, bias=False)  # down
        self.w3 = Linear(dim, hidden, bias=False)  # up
        self.w13: torch.Tensor | None = None  # fused gate/up weight, see fused_weight

    def fused_weight(self) -> torch.Tensor:
        """gate and up in one matrix [2 * hidden, dim]; the only copy once w1/w3 are dropped."""
        if self.w1 is not None and not _is_fused(self.w13, self.w1):
            self.w13 = fuse_linears(self.w1, self.w3)
        return self.w13

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = _linear(x, self.fused_weight(), self.w2.exact).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, flavor: LlamaFlavor, rope: RotaryEmbedding):
        super().__init__()
        self.sa_norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        self.attn = Attention(flavor, rope)
        self.mlp_norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        self.mlp = MLP(flavor.embed_dim, flavor.intermediate_dim)

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        h = x + self.attn(self.sa_norm(x), batch)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """A Llama stack without token embeddings or output head (CSM feeds embeddings in)."""

    def __init__(self, flavor: LlamaFlavor, uniform_positions: bool = False):
        super().__init__()
        self.flavor = flavor
        self.rope = RotaryEmbedding(flavor)
        self.layers = nn.ModuleList([Block(flavor, self.rope) for _ in range(flavor.num_layers)])
        self.norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        self.decode_mask: DecodeMask | None = None
        for layer in self.layers:
            layer.attn.uniform = uniform_positions

    def setup_cache(self, max_slots: int, max_seq: int | None = None) -> None:
        f = self.flavor
        seq = min(max_seq or f.max_seq_len, f.max_seq_len)
        p = self.norm.scale
        for layer in self.layers:
            layer.attn.cache = SlotKVCache(max_slots, f.num_kv_heads, seq, f.head_dim, p.dtype, p.device)
        self.decode_mask = DecodeMask(max_slots, seq, p.device)

    @property
    def cache_shape(self) -> tuple[int, int]:
        """(rows, max_seq) of the allocated cache."""
        k = self.layers[0].attn.cache.k
        return k.shape[0], k.shape[2]

    @property
    def flex(self) -> bool:
        return self.layers[0].attn.flex

    def set_exact(self, exact: bool) -> None:
        for m in self.modules():
            if isinstance(m, (Linear, Attention)):
                m.exact = exact

    def set_attention(self, kind: str) -> None:
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
        for layer in self.layers:
            layer.attn.flex = kind == "flex"

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        """x [b, s, dim] -> normed hidden states [b, s, dim]."""
        for layer in self.layers:
            x = layer(x, batch)
        return self.norm(x)
