"""CSM: a Llama backbone over 33-token frames, and a depth decoder for codebooks 1..31.

Entry points used by the reference path and the engine alike:
- `prefill(slot, tokens, mask, start)`: a chunk of prompt positions into one slot's KV rows.
- `decode(slots, frames, positions)`: one position for any set of slots, each at its own position.
- `c0_logits(h)`, `depth_step` and `codebook_logits` turn the last hidden state into a frame
  (csm_core/frame.py runs them for codebooks 0..31).
"""

from __future__ import annotations

import torch
from torch import nn

from csm_core.config import ModelConfig
from csm_core.llama import ROW_MULTIPLE, AttentionBatch, Linear, Transformer, exact_linear


class CSMModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        b, d = config.backbone, config.decoder
        self.backbone = Transformer(b)
        self.decoder = Transformer(d, uniform_positions=True)
        self.text_embeddings = nn.Embedding(config.text_vocab_size, b.embed_dim)
        self.audio_embeddings = nn.Embedding(config.audio_vocab_size * config.audio_num_codebooks, b.embed_dim)
        self.projection = Linear(b.embed_dim, d.embed_dim, bias=False)
        self.codebook0_head = Linear(b.embed_dim, config.audio_vocab_size, bias=False)
        self.audio_head = nn.Parameter(torch.empty(config.audio_num_codebooks - 1, d.embed_dim, config.audio_vocab_size))
        self.register_buffer(
            "codebook_offsets",
            torch.arange(config.audio_num_codebooks) * config.audio_vocab_size,
            persistent=False,
        )
        self.exact = False

    # -- setup -------------------------------------------------------------------------
    def setup_caches(self, max_slots: int, max_seq: int | None = None) -> None:
        """Allocate the backbone's slot cache and the depth decoder's per-frame cache."""
        self.backbone.setup_cache(max_slots, max_seq)
        rows = max_slots + (-max_slots % ROW_MULTIPLE)  # exact mode pads the frame batch to a multiple
        self.decoder.setup_cache(rows, self.config.audio_num_codebooks)

    def set_exact(self, exact: bool) -> None:
        """Exact mode: results per slot do not depend on the batch (see csm_core/llama.py). It
        attends per slot (rows attention)."""
        if exact and self.backbone.flex:
            raise ValueError("exact mode attends per slot: set the rows attention first")
        self.exact = exact
        self.backbone.set_exact(exact)
        self.decoder.set_exact(exact)
        for m in (self.projection, self.codebook0_head):
            m.exact = exact

    def kv_rows(self, slot: int, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of one slot's backbone KV rows [start, end), per layer: (k, v), each
        [kv_heads, end - start, head_dim]. The prefix cache copies through them
        (server/engine/kv_blocks.py)."""
        return [(layer.attn.cache.k[slot, :, start:end], layer.attn.cache.v[slot, :, start:end])
                for layer in self.backbone.layers]

    def set_attention(self, kind: str) -> None:
        """The backbone's attention over the slot cache: "rows" (per slot) or "flex" (csm_core/llama.py)."""
        if kind == "flex" and self.exact:
            raise ValueError("exact mode attends per slot (rows): turn it off before choosing flex attention")
        self.backbone.set_attention(kind)

    @property
    def max_seq(self) -> int:
        return self.backbone.cache_shape[1]

    # -- embeddings --------------------------------------------------------------------
    def embed_frames(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens, mask [b, s, 33] -> [b, s, dim]: sum of the unmasked columns' embeddings."""
        text = self.text_embeddings(tokens[..., -1]).unsqueeze(-2)  # [b, s, 1, dim]
        audio = self.audio_embeddings(tokens[..., :-1] + self.codebook_offsets)  # [b, s, 32, dim]
        embeds = torch.cat([audio, text], dim=-2) * mask.unsqueeze(-1).to(text.dtype)
        return embeds.sum(dim=-2)

    def embed_audio(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        """codes [b] of one codebook -> [b, dim]"""
        return self.audio_embeddings(codes + codebook * self.config.audio_vocab_size)

    # -- backbone ----------------------------------------------------------------------
    def prefill(self, slot: int, tokens: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
        """Write prompt positions [start, start + s) of one slot. tokens, mask [s, 33].
        Returns the hidden state of the chunk's last position. [1, dim]"""
        s = tokens.shape[0]
        dev = tokens.device
        x = self.embed_frames(tokens.unsqueeze(0), mask.unsqueeze(0))  # [1, s, dim]
        pos = torch.arange(start, start + s, device=dev).unsqueeze(0)  # [1, s]
        slots = torch.tensor([slot], device=dev)
        h = self.backbone(x, AttentionBatch(pos=pos, slots=slots, rows=[slot], lengths=[start + s]))
        return h[:, -1]

    def decode(self, slots: torch.Tensor, frames: torch.Tensor, positions: torch.Tensor,
               lengths: list[int] | None = None) -> torch.Tensor:
        """One generated frame per slot, each at its own position.
        slots [b], frames [b, 32] codes, positions [b]; lengths[i] = positions[i] + 1 as host ints
        (rows attention; flex reads the positions on the device, so a captured step can run it).
        Returns hidden states [b, dim]."""
        b = frames.shape[0]
        tokens = torch.cat([frames, frames.new_zeros(b, 1)], dim=1).unsqueeze(1)  # [b, 1, 33]
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[..., -1] = False  # text column masked
        x = self.embed_frames(tokens, mask)  # [b, 1, dim]
        pos = positions.unsqueeze(1)  # [b, 1]
        if self.backbone.flex:
            batch = AttentionBatch(pos=pos, slots=slots, block_mask=self.backbone.decode_mask.update(slots, positions))
        else:
            batch = AttentionBatch(pos=pos, slots=slots, rows=slots.tolist(),
                                   lengths=lengths if lengths is not None else (positions + 1).tolist())
        return self.backbone(x, batch)[:, 0]

    def c0_logits(self, h: torch.Tensor) -> torch.Tensor:
        """[b, dim] -> [b, audio_vocab] logits of codebook 0."""
        return self.codebook0_head(h).float()

    # -- depth decoder -----------------------------------------------------------------
    def depth_step(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """One depth-decoder position for rows 0..b-1 of its per-frame cache.
        x [b, backbone_dim] (the backbone state at position 0, else a codebook embedding).
        Returns decoder hidden states [b, decoder_dim]."""
        return self.decoder(self.projection(x).unsqueeze(1), AttentionBatch(pos=position))[:, 0]

    def codebook_logits(self, codebook: int, hd: torch.Tensor) -> torch.Tensor:
        """Logits of codebook i >= 1 from the depth decoder state. [b, dec_dim] -> [b, vocab]"""
        w = self.audio_head[codebook - 1]  # [dec_dim, vocab]
        if self.exact:
            return exact_linear(hd, w.t()).float()
        return torch.mm(hd, w).float()
