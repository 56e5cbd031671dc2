"""Host memory for the KV rows of preempted requests, under a byte budget.

A preempted request's rows [0, positions) are copied out of its slot and, once it has a slot
again, copied back bit for bit: the resumed stream continues exactly as if it had never given
its slot up. Recomputing the rows instead (prefilling prompt and generated frames again) is not
exact: prefill chunks and single decode positions round differently (up to 1e-6 on the bench
preset in fp32), enough to change a sampled code now and then.
"""

from __future__ import annotations

import torch

from csm_core.model import CSMModel

Rows = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: K, V [kv_heads, positions, head_dim]


class KVSwap:
    def __init__(self, model: CSMModel, budget_bytes: int):
        f = model.backbone.flavor
        dtype = model.backbone.layers[0].attn.cache.k.dtype
        self.model = model
        self.budget_bytes = budget_bytes
        self.position_bytes = f.num_layers * 2 * f.num_kv_heads * f.head_dim * dtype.itemsize
        self.used_bytes = 0
        self._pin = model.audio_head.device.type == "cuda"  # pinned host memory copies asynchronously

    def can_hold(self, positions: int) -> bool:
        return self.used_bytes + positions * self.position_bytes <= self.budget_bytes

    def swap_out(self, slot: int, positions: int) -> Rows:
        """Host copies of rows [0, positions) of a slot."""
        rows = []
        for k, v in self.model.kv_rows(slot, 0, positions):
            rows.append((k.to("cpu", copy=True).pin_memory() if self._pin else k.clone(),
                         v.to("cpu", copy=True).pin_memory() if self._pin else v.clone()))
        self.used_bytes += positions * self.position_bytes
        return rows

    def swap_in(self, slot: int, rows: Rows) -> None:
        """Rows copied out earlier into rows [0, positions) of another slot; their memory is freed."""
        positions = rows[0][0].shape[1]
        for (k, v), (saved_k, saved_v) in zip(self.model.kv_rows(slot, 0, positions), rows):
            k.copy_(saved_k, non_blocking=True)
            v.copy_(saved_v, non_blocking=True)
        self.release(rows)

    def release(self, rows: Rows) -> None:
        """Rows that will not be swapped in (their request ended while preempted)."""
        self.used_bytes -= rows[0][0].shape[1] * self.position_bytes
