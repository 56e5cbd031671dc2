"""Mimi streaming decode on its own thread, pipelined with the model steps.

The engine thread hands over each step's codes (`decode`) and goes on with the next step while
this thread decodes the previous one: on CPU the model step and Mimi then overlap instead of
adding up. When Mimi falls behind, the steps waiting in the queue for the same set of slots are
decoded together, several frames per call (Mimi's per-call cost dominates small calls), so the
pipeline batches in time exactly when it needs to and keeps one frame per call otherwise. Slot resets, frames and stream ends travel through one FIFO queue, so a slot's
state is reset before its first frame and a stream's end reaches the output stage after its
last frame. The queue is bounded: when Mimi falls behind, the engine waits (backpressure)
rather than letting latency grow.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import torch

from csm_core.constants import FRAME_SAMPLES, MIMI_CODEBOOK_SIZE
from csm_core.mimi import MimiCodec
from server.engine.output import OutputStage
from server.engine.request import Request

log = logging.getLogger(__name__)

MAX_FRAMES_PER_CALL = 4  # Mimi's per-frame cost at batch 8: ~8.7 ms with 1 frame per call, ~4.5 ms with 4


class AudioDecoder:
    def __init__(self, mimi: MimiCodec, max_slots: int, output: OutputStage,
                 on_error: Callable[[Request, str], None], max_pending_steps: int = 4):
        self.max_slots = max_slots
        self.output = output
        self.on_error = on_error
        self._stream = mimi.stream_decoder(max_slots)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending_steps + 4 * max_slots)
        self._pending_steps = threading.Semaphore(max_pending_steps)
        self.busy_s = 0.0  # Mimi decode time (read by stats)
        self._thread = threading.Thread(target=self._loop, name="csm-mimi", daemon=True)
        self._thread.start()

    # -- engine thread -----------------------------------------------------------------
    def reset(self, slot: int) -> None:
        self._queue.put(("reset", slot, None))

    def decode(self, producers: list[Request], codes: torch.Tensor, eos: list[bool]) -> None:
        """codes [b, 32] of this step's producers (row order); EOS rows are not decoded."""
        rows = [(req, req.slot, codes[i]) for i, req in enumerate(producers) if not eos[i]]
        if not rows:
            return
        self._pending_steps.acquire()  # backpressure: at most max_pending_steps steps in flight
        self._queue.put(("decode", rows, None))

    def finish(self, req: Request) -> None:
        self._queue.put(("finish", req, None))

    def flush(self, timeout: float = 30.0) -> None:
        done = threading.Event()
        self._queue.put(("barrier", done, None))
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._stream.close()

    # -- Mimi thread -------------------------------------------------------------------
    @torch.inference_mode()
    def _loop(self) -> None:
        carry = None
        while True:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if item is None:
                return
            kind, arg, _ = item
            if kind == "reset":
                self._stream.reset([arg])
            elif kind == "finish":
                self.output.finish(arg)
            elif kind == "barrier":
                self.output.flush()
                arg.set()
            else:
                steps = [arg]
                slots = [slot for _, slot, _ in arg]
                while len(steps) < MAX_FRAMES_PER_CALL:  # merge queued steps of the same slots
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is not None and nxt[0] == "decode" and [slot for _, slot, _ in nxt[1]] == slots:
                        steps.append(nxt[1])
                    else:
                        carry = nxt
                        break
                try:
                    self._decode(steps)
                finally:
                    for _ in steps:
                        self._pending_steps.release()

    def _decode(self, steps: list[list[tuple[Request, int, torch.Tensor]]]) -> None:
        """Steps with the same rows -> one Mimi call with T = len(steps) frames per row."""
        t0 = time.perf_counter()
        rows = steps[0]
        dev = rows[0][2].device
        n = len(steps)
        batch = torch.zeros(self.max_slots, rows[0][2].shape[0], n, dtype=torch.long, device=dev)  # [slots, 32, T]
        active = torch.zeros(self.max_slots, dtype=torch.bool, device=dev)
        for t, step in enumerate(steps):
            for _, slot, codes in step:
                batch[slot, :, t] = codes.clamp(max=MIMI_CODEBOOK_SIZE - 1)
                active[slot] = True
        try:
            pcm = self._stream.decode(batch, active).float().cpu()  # [slots, T * 1920]
        except Exception as e:
            log.exception("Mimi decode failed")
            for req, _, _ in rows:
                self.on_error(req, f"audio decoding failed: {e}")
            return
        finally:
            self.busy_s += time.perf_counter() - t0
        for t, step in enumerate(steps):
            for req, slot, _ in step:
                self.output.frame(req, pcm[slot, t * FRAME_SAMPLES : (t + 1) * FRAME_SAMPLES])
