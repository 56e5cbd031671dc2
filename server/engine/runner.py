"""Runs one scheduled step on the model: prefill chunks, one backbone position for every
decoding slot, and codebook 0 + the depth decoder for every slot that makes a frame.
(Mimi decodes the frames on its own thread: server/engine/mimi_decode.py.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from csm_core.framing import Prompt
from csm_core.generate import prefill_slot
from csm_core.model import CSMModel
from csm_core.sampling import SamplingParams, frame_noise, seed_key
from csm_core.step import DecodeStep
from server.engine.kv_blocks import KVBlockPool
from server.engine.kv_swap import KVSwap, Rows
from server.engine.request import Request
from server.engine.scheduler import SchedulerOutput


@dataclass(slots=True)
class SlotState:
    """Tensors of one request, kept between steps."""

    prompt: Prompt
    sampling: SamplingParams
    seed: int  # its seed as frame_noise takes it (csm_core/sampling.py)
    frames_drawn: int = 0  # frames whose noise it has drawn: the next frame's number
    last_frame: torch.Tensor | None = None  # [32] codes to feed back next step
    swapped: Rows | None = None  # its KV rows in host memory while it is preempted


@dataclass(slots=True)
class StepResult:
    producers: list[Request]  # requests that made a frame this step, in row order
    eos: list[bool]  # per producer: the frame was the end-of-utterance frame
    codes: torch.Tensor | None  # [len(producers), 32]
    failed: list[tuple[Request, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class ModelRunner:
    def __init__(self, model: CSMModel, max_slots: int, max_seq: int, cuda_graphs: bool = True,
                 prefix_cache_bytes: int = 0, prefill_chunk: int = 64, swap_bytes: int = 0):
        self.model = model
        self.device = model.audio_head.device
        self.max_slots = max_slots
        graphs = cuda_graphs and self.device.type == "cuda" and not model.exact
        self.step = DecodeStep(model, max_slots, max_seq, graphs=graphs)  # sets up the caches
        self.max_seq = model.max_seq
        pool = KVBlockPool(model, prefix_cache_bytes, prefill_chunk) if prefix_cache_bytes > 0 else None
        self.kv_blocks = pool if pool is not None and pool.num_blocks > 0 else None  # the prefix cache's rows
        self.swap = KVSwap(model, swap_bytes) if swap_bytes > 0 else None  # preempted requests' rows (None: off)

    def swap_out(self, req: Request) -> bool:
        """Copies a decoding request's KV rows to host memory, if the budget holds them."""
        positions = req.prompt_len + req.num_frames - 1  # its last frame is fed at the next step
        if self.swap is None or not self.swap.can_hold(positions):
            return False
        req.state.swapped = self.swap.swap_out(req.slot, positions)
        return True

    def drop_swapped(self, req: Request) -> None:
        """A request ends: the host copy of its rows, if any, is freed."""
        if req.state is not None and req.state.swapped is not None:
            self.swap.release(req.state.swapped)
            req.state.swapped = None

    def new_state(self, prompt: Prompt, sampling: SamplingParams, seed: int) -> SlotState:
        """The tensors a request keeps between steps (engine thread, when it is prepared)."""
        return SlotState(prompt, sampling, seed_key(seed))

    @torch.inference_mode()
    def run(self, plan: SchedulerOutput) -> StepResult:
        t0 = time.perf_counter()
        timings = {"backbone": 0.0, "depth": 0.0}
        producers: list[Request] = []
        hs: list[torch.Tensor] = []
        failed: list[tuple[Request, str]] = []
        for req in plan.swap_ins:
            rows, req.state.swapped, req.swapped = req.state.swapped, None, False
            self.swap.swap_in(req.slot, rows)
        for load in plan.loads:
            try:
                self.kv_blocks.load(load.request.slot, load.blocks)
            except Exception as e:
                failed.append((load.request, f"copying the cached prefix failed: {e}"))
        saves = {}
        for save in plan.saves:
            saves.setdefault(id(save.chunk), []).append(save)
        for chunk in plan.prefill:
            req = chunk.request
            if any(r is req for r, _ in failed):
                continue
            try:
                h = prefill_slot(self.model, req.slot, req.state.prompt, chunk.start, chunk.end)
                for save in saves.get(id(chunk), ()):
                    self.kv_blocks.save(req.slot, chunk.start, save.block)
            except Exception as e:  # one request's bad input must not stop the others
                failed.append((req, f"prefill failed: {e}"))
                continue
            if chunk.completes_prompt:
                producers.append(req)
                hs.append(h)
        if plan.decode:
            frames = torch.stack([r.state.last_frame for r in plan.decode])  # [b, 32]
            pos = [r.prompt_len + r.num_frames - 1 for r in plan.decode]
            h = self.step.backbone([r.slot for r in plan.decode], frames, pos)
            producers.extend(plan.decode)
            hs.append(h)
        t1 = time.perf_counter()
        timings["backbone"] = t1 - t0
        if not producers:
            return StepResult([], [], None, failed, timings)
        h = torch.cat(hs)  # [b, dim]
        codes = self.step.frames(h, [r.state.sampling for r in producers], self._noise(producers))  # [b, 32]
        eos = (codes == 0).all(dim=1).tolist()  # the step's one host sync
        timings["depth"] = time.perf_counter() - t1
        for i, req in enumerate(producers):
            req.state.last_frame = codes[i]
            req.state.frames_drawn += 1
        return StepResult(producers, eos, codes, failed, timings)

    def _noise(self, producers: list[Request]) -> torch.Tensor:
        """This frame's noise for every producer at once [b, 32, largest top-k]: one small copy
        of their seeds and frame numbers, then the same few kernels whatever b."""
        keys = torch.tensor([[r.state.seed for r in producers], [r.state.frames_drawn for r in producers]])  # [2, b]
        keys = keys.to(self.device, non_blocking=True)
        return frame_noise(keys[0], keys[1], max(r.state.sampling.effective_top_k for r in producers))
