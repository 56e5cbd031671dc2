"""The model work of one engine step, built once per (model, slots):

    step = DecodeStep(model, max_slots, max_seq, graphs=True)
    h = step.backbone(slots, frames, positions)      # one backbone position per decoding slot [b, dim]
    codes = step.frames(h, sampling, noise)          # codebook 0 + 31 depth positions, sampled [n, 32]

Eager (CPU, or graphs off) the two calls run the model's functions as they are. With graphs, each
call copies its rows into the fixed inputs of the smallest batch bucket that holds them and replays
that bucket's CUDA graph: one launch for the backbone position of every slot (embedding, every
layer, FlexAttention over each slot's live keys) and one for the whole frame (c0, the depth
decoder's 31 positions, each row sampled with its own temperature, top-k and noise), instead of
about 2,000 kernel launches. Host work per step does not grow with the rows in kernels: one staged
copy of the rows' small inputs, one copy of their frames and one of their noise (drawn for every
row at once: csm_core/sampling.py); the caller's EOS check on the codes is the step's one host sync.

Padding rows (a bucket larger than the batch) decode greedily from stale inputs; in the backbone
they write their key at position 0 of a scratch cache row (one past the last slot), so no slot's
cache is touched, and their outputs are never read.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from csm_core.constants import AUDIO_VOCAB_SIZE, NUM_CODEBOOKS
from csm_core.frame import sample_frames
from csm_core.model import CSMModel
from csm_core.sampling import BatchSampler, SamplingParams

BUCKET_STEP = 32  # batch buckets: powers of two below this, then its multiples


def batch_buckets(max_rows: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, 8, 16, 32, 64, 96, ..., max_rows (padding < 32 rows, < 2x)."""
    sizes = [n for n in (1, 2, 4, 8, 16) if n < min(max_rows, BUCKET_STEP)]
    sizes += range(BUCKET_STEP, max_rows, BUCKET_STEP)
    return sorted(set(sizes) | {max_rows})


class DecodeStep:
    """One backbone position for the decoding slots, and one frame for every slot that makes one.

    graphs: replay CUDA graphs per batch bucket (CUDA, non-exact model; flex attention). Off CUDA,
    `graphs=True` runs the same fixed-shape buckets eagerly: slower, and what tests use to check
    the padding. attention: "rows" or "flex" (csm_core/llama.py); default flex with graphs or on
    CUDA unless the model is in exact mode, else rows. The step sets up the model's caches."""

    def __init__(self, model: CSMModel, max_slots: int, max_seq: int, *, graphs: bool = False,
                 attention: str | None = None):
        self.model = model
        self.device = model.audio_head.device
        if attention is None:
            attention = "flex" if (graphs or self.device.type == "cuda") and not model.exact else "rows"
        if graphs and attention != "flex":
            raise ValueError("a graphed step needs flex attention (rows attention reads host-side lengths)")
        model.set_attention(attention)
        self.max_slots = max_slots
        self.graphs = graphs
        model.setup_caches(max_slots + 1 if graphs else max_slots, max_seq)  # + the padding rows' scratch row
        self._backbone: _Buckets | None = None
        self._frames: _Buckets | None = None
        if graphs:
            capture = self.device.type == "cuda"
            pool = torch.cuda.graph_pool_handle() if capture else None
            with torch.inference_mode():
                scratch = max_slots  # the cache row past the slots
                self._backbone = _Buckets(max_slots, lambda rows: _BackboneInputs(model, rows, scratch), capture, pool)
                self._frames = _Buckets(max_slots, lambda rows: _FrameInputs(model, rows), capture, pool)

    @torch.inference_mode()
    def backbone(self, slots: list[int], frames: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """Slots [b] feed back frames [b, 32] at positions [b]. Returns hidden states [b, dim]
        (graphs: a view of the bucket's output, valid until its next replay)."""
        if self._backbone is None:
            dev = self.device
            return self.model.decode(torch.tensor(slots, device=dev), frames,
                                     torch.tensor(positions, device=dev), [p + 1 for p in positions])
        bucket = self._backbone.bucket(len(slots))
        bucket.inputs.fill(slots, frames, positions)
        return bucket.replay()[: len(slots)]

    @torch.inference_mode()
    def frames(self, h: torch.Tensor, sampling: list[SamplingParams], noise: torch.Tensor) -> torch.Tensor:
        """Rows' backbone states h [n, dim], sampling parameters and this frame's noise [n, 32, k]
        with k at least the largest top-k (csm_core/sampling.py `frame_noise`; a row's columns
        past its own top-k are never chosen). Returns codes [n, 32] int64."""
        if self._frames is None:
            return sample_frames(self.model, h, BatchSampler(sampling, self.device), noise)
        bucket = self._frames.bucket(h.shape[0])
        bucket.inputs.fill(h, sampling, noise)
        return bucket.replay()[: h.shape[0]].clone()  # the next replay rewrites the bucket's output


# -- buckets ----------------------------------------------------------------------------
class _Bucket:
    """A function of fixed-shape inputs, captured once as a CUDA graph (or run eagerly per call)."""

    def __init__(self, inputs, capture: bool, pool):
        self.inputs = inputs
        self.graph: torch.cuda.CUDAGraph | None = None
        if not capture:
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph: lazy inits, the compiled attention kernel
                inputs.forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = inputs.forward()

    def replay(self) -> torch.Tensor:
        if self.graph is None:
            with torch.profiler.record_function("csm.step.graph"):  # one launch on CUDA (scripts/step_counters.py)
                return self.inputs.forward()
        self.graph.replay()
        return self.out


class _Buckets:
    def __init__(self, max_rows: int, make_inputs: Callable[[int], object], capture: bool, pool):
        # Largest first: smaller graphs reuse the memory pool the largest one sized.
        self.buckets = [_Bucket(make_inputs(n), capture, pool) for n in reversed(batch_buckets(max_rows))][::-1]

    def bucket(self, rows: int) -> _Bucket:
        return next(b for b in self.buckets if b.inputs.rows >= rows)


class _Staging:
    """A pinned host copy of one of a bucket's small inputs: filled on the host, sent with one
    asynchronous copy, and refilled only once that copy is done."""

    def __init__(self, device_buf: torch.Tensor):
        self.device_buf = device_buf
        pin = device_buf.device.type == "cuda"
        self.host = torch.zeros(device_buf.shape, dtype=device_buf.dtype, pin_memory=pin)
        self.copied = torch.cuda.Event() if pin else None

    def send(self, values: list) -> None:
        """values: nested lists of the device buffer's shape."""
        if self.copied is not None:
            self.copied.synchronize()  # the previous step's copy: long done, returns at once
        self.host.copy_(torch.tensor(values, dtype=self.host.dtype))
        self.device_buf.copy_(self.host, non_blocking=True)
        if self.copied is not None:
            self.copied.record()


class _BackboneInputs:
    def __init__(self, model: CSMModel, rows: int, scratch_slot: int):
        dev = model.audio_head.device
        self.model = model
        self.rows = rows
        self.scratch_slot = scratch_slot
        self.meta = torch.zeros(2, rows, dtype=torch.long, device=dev)  # [2, rows]: slots, positions
        self.meta[0] = scratch_slot
        self.frames = torch.zeros(rows, NUM_CODEBOOKS, dtype=torch.long, device=dev)  # [rows, 32]
        self.staging = _Staging(self.meta)

    def fill(self, slots: list[int], frames: torch.Tensor, positions: list[int]) -> None:
        pad = self.rows - len(slots)
        self.staging.send([slots + [self.scratch_slot] * pad, positions + [0] * pad])
        self.frames[: len(slots)].copy_(frames)

    def forward(self) -> torch.Tensor:
        return self.model.decode(self.meta[0], self.frames, self.meta[1])  # [rows, dim]


class _FixedSampler(BatchSampler):
    """A BatchSampler over a bucket's fixed tensors, refilled before every replay. It ranks the
    whole vocabulary, so one graph serves every top-k."""

    cache_mask = False  # k changes in place before every replay

    def __init__(self, rows: int, device):
        self._outside = None
        self.max_k = AUDIO_VOCAB_SIZE
        self.temperature = torch.ones(rows, 1, device=device)  # [rows, 1]
        self.k = torch.ones(rows, 1, dtype=torch.long, device=device)  # [rows, 1]


class _FrameInputs:
    def __init__(self, model: CSMModel, rows: int):
        dev = model.audio_head.device
        self.model = model
        self.rows = rows
        self.h = torch.zeros(rows, model.config.backbone.embed_dim, dtype=model.audio_head.dtype, device=dev)
        # [rows, 32, vocab]: row i's first top_k columns are rewritten every step; the columns past
        # a row's top-k are masked by the sampler, so what earlier steps left there never counts
        self.noise = torch.ones(rows, NUM_CODEBOOKS, AUDIO_VOCAB_SIZE, device=dev)
        self.sampler = _FixedSampler(rows, dev)
        self.temp_staging = _Staging(self.sampler.temperature.view(-1))
        self.k_staging = _Staging(self.sampler.k.view(-1))

    def fill(self, h: torch.Tensor, sampling: list[SamplingParams], noise: torch.Tensor) -> None:
        n = h.shape[0]
        pad = self.rows - n
        self.h[:n].copy_(h)
        self.temp_staging.send([1.0 if p.greedy else p.temperature for p in sampling] + [1.0] * pad)
        self.k_staging.send([p.effective_top_k for p in sampling] + [1] * pad)
        self.noise[:n, :, : noise.shape[2]].copy_(noise)  # one copy for every row

    def forward(self) -> torch.Tensor:
        return sample_frames(self.model, self.h, self.sampler, self.noise)  # [rows, 32]
