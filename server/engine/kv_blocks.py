"""The prefix cache's rows: a pool of blocks on the model's device, each the backbone KV of one
aligned prefill chunk (server/engine/prefix_cache.py keeps the books). Copies only: `save`
after a chunk is prefilled, `load` when an admitted request's prefix is cached.
"""

from __future__ import annotations

import torch

from csm_core.framing import Prompt
from csm_core.model import CSMModel
from server.engine.prefix_cache import BlockHash, chain_hashes


class KVBlockPool:
    def __init__(self, model: CSMModel, budget_bytes: int, block_positions: int):
        f = model.backbone.flavor
        dtype = model.backbone.layers[0].attn.cache.k.dtype
        self.model = model
        self.block_positions = block_positions
        self.shape = (f.num_layers, 2, f.num_kv_heads, block_positions, f.head_dim)  # one block
        self.block_bytes = torch.Size(self.shape).numel() * dtype.itemsize
        self.num_blocks = budget_bytes // self.block_bytes
        # [blocks, layers, k/v, kv_heads, block_positions, head_dim]; untouched pages of a CPU
        # pool are not resident until a block is written
        self.blocks = torch.empty((self.num_blocks, *self.shape), dtype=dtype, device=model.audio_head.device)

    def save(self, slot: int, start: int, block: int) -> None:
        """Rows [start, start + block_positions) of a slot into a block."""
        dst = self.blocks[block]
        for layer, (k, v) in enumerate(self.model.kv_rows(slot, start, start + self.block_positions)):
            dst[layer, 0].copy_(k)
            dst[layer, 1].copy_(v)

    def load(self, slot: int, blocks: list[int]) -> None:
        """Blocks 0..n-1 of a prefix into rows [0, n * block_positions) of a slot."""
        n, p = len(blocks), self.block_positions
        ids = torch.tensor(blocks, device=self.blocks.device)
        src = self.blocks.index_select(0, ids)  # [n, layers, 2, kv_heads, p, head_dim]
        for layer, (k, v) in enumerate(self.model.kv_rows(slot, 0, n * p)):
            kv_heads, _, head_dim = k.shape
            k.copy_(src[:, layer, 0].transpose(0, 1).reshape(kv_heads, n * p, head_dim))
            v.copy_(src[:, layer, 1].transpose(0, 1).reshape(kv_heads, n * p, head_dim))


def block_hashes(prompt: Prompt, block_positions: int, *, tenant: str) -> tuple[BlockHash, ...]:
    """The chain hashes of a prompt's whole chunks (the prompt starts at position 0), from the
    root of the request's tenant: each chunk's frames, tokens and mask [block_positions, 33], as bytes."""
    tokens, mask = prompt.tokens.cpu().numpy(), prompt.mask.cpu().numpy()
    n = len(prompt) // block_positions
    return chain_hashes((tokens[i * block_positions:(i + 1) * block_positions].tobytes()
                         + mask[i * block_positions:(i + 1) * block_positions].tobytes() for i in range(n)), tenant)
