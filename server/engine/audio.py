"""Mimi streaming decode on its own thread, pipelined with the model steps.

The engine thread hands over each step's codes (`decode`) and goes on with the next step while
this thread decodes earlier ones: on CPU the model step and Mimi overlap instead of adding up.
When Mimi falls behind, the steps waiting in the queue are decoded together, several frames
per row in one call (Mimi's per-call cost dominates small calls), so the pipeline batches in
time exactly when it needs to and keeps one frame per call otherwise.

Slot resets, frames and stream ends travel through one FIFO queue. A merged call may span
streams that end inside it (their rows get padding frames whose output is dropped, and their
end is passed on after the call), but it stops at a slot reset: a new stream's first frame
always starts a call, after its row's state was reset.

Backpressure is paced. At most `max_frames_per_call` steps wait for Mimi; when a call takes T
steps, their T places are given back spread over the call's expected length (one at once, then
one every call-time / T, from the measured time of recent calls of the same shape), not all at
once. Without the spreading the engine, faster than Mimi, would make T frames back to back and
then stall for the rest of the call: every stream's frames would come in lumps (gap p95 ~3x the
mean) and any longer step (a prefill chunk) would land on top of a stall. Paced, the engine
makes a frame every call-time / T and spends its slack there, so a prefill chunk that fits in
the slack costs the running streams nothing. The queue stays full, so Mimi keeps its merged calls.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable

import torch

from csm_core.constants import FRAME_SAMPLES, MIMI_CODEBOOK_SIZE
from csm_core.mimi import MimiCodec
from server.engine.output import OutputStage
from server.engine.request import Request

log = logging.getLogger(__name__)

# Credits are spread at this multiple of the expected per-step call time. Early (< 1), the
# engine runs out of credits before the call ends and waits for the rest of it in one gap; late
# is safe up to T / (T - 1) (the last credit still comes before the call ends, so the next call
# finds as many steps waiting), so when in doubt, a little late.
PACE = 1.0
# Weight of the newest call in the per-shape estimate of Mimi's time per step.
PACE_EMA = 0.3
# A Mimi call's fixed cost, in frames' worth of its per-frame cost (a call of T frames costs
# about T + CALL_OVERHEAD_FRAMES frames; on 2 CPU cores, 8 rows: ~100 ms for 1 frame, ~270 ms
# for 4). Used only to guess a call shape not timed yet from one that was.
CALL_OVERHEAD_FRAMES = 0.8


class PacedCredits:
    """A counting semaphore whose releases may be dated in the future: `acquire` takes the
    earliest credit and, when that credit is not due yet, sleeps until it is."""

    def __init__(self, count: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self._clock, self._sleep = clock, sleep
        self._due: list[float] = [0.0] * count  # sorted due times of the credits not taken
        self._cv = threading.Condition()

    def acquire(self) -> None:
        with self._cv:
            while not self._due:
                self._cv.wait()
            due = self._due.pop(0)
        wait = due - self._clock()
        if wait > 0:
            self._sleep(wait)

    def release(self, count: int, spacing_s: float = 0.0) -> None:
        """Give back `count` credits: the first now, the others `spacing_s` apart."""
        now = self._clock()
        with self._cv:
            for i in range(count):
                bisect.insort(self._due, now + i * spacing_s)
            self._cv.notify(count)


class AudioDecoder:
    def __init__(self, mimi: MimiCodec, max_slots: int, output: OutputStage,
                 on_error: Callable[[Request, str], None], max_frames_per_call: int,
                 torch_threads: int | None = None):
        self.max_slots = max_slots
        self.output = output
        self.on_error = on_error
        self.max_frames_per_call = max_frames_per_call
        # Steps queued and not yet taken by a call: a call's worth, so that when Mimi is the
        # bottleneck the next full call is queued by the time one is decoded, and the engine
        # refills the queue step by step, paced (it never waits for a whole call to end).
        max_pending_steps = max_frames_per_call
        self._torch_threads = torch_threads
        self._stream = mimi.stream_decoder(max_slots)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending_steps + 4 * max_slots)
        self._credits = PacedCredits(max_pending_steps)
        self._step_s: dict[tuple[int, int], float] = {}  # (rows, steps) of a call -> seconds per step
        self.busy_s = 0.0  # Mimi decode time (read by stats)
        self.calls = 0
        self.frames = 0  # step-frames decoded (a call of T steps counts T)
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
        self._credits.acquire()  # backpressure, paced: at most max_pending_steps steps waiting
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
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
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
                steps, finished, carry = self._gather(arg)
                shape = (max(slot for _, slot, _ in arg) + 1, len(steps))
                self._credits.release(len(steps), PACE * self._expected_step_s(shape))
                busy = self.busy_s
                self._decode(steps)
                per_step = (self.busy_s - busy) / len(steps)  # this call's time, as _decode counts it
                last = self._step_s.get(shape)
                self._step_s[shape] = per_step if last is None else last + PACE_EMA * (per_step - last)
                for req in finished:  # after their last frames
                    self.output.finish(req)

    def _expected_step_s(self, shape: tuple[int, int]) -> float:
        """Seconds per step of a call of `shape` (rows, steps): as measured, else from the nearest
        measured shape (rows first, then steps), scaled to these rows (a call's cost is about
        linear in its rows) and steps (T frames cost about T + CALL_OVERHEAD_FRAMES);
        0 (no pacing) until a call was timed."""
        if shape in self._step_s:
            return self._step_s[shape]
        if not self._step_s:
            return 0.0
        rows, steps = shape
        (near_rows, near_steps), per_step = min(self._step_s.items(),
                                                key=lambda kv: (abs(kv[0][0] - rows), abs(kv[0][1] - steps)))
        per_frame = per_step * near_steps / (near_steps + CALL_OVERHEAD_FRAMES)
        return per_frame * (steps + CALL_OVERHEAD_FRAMES) / steps * rows / near_rows

    def _gather(self, first: list) -> tuple[list[list], list[Request], tuple | None]:
        """The queued steps that can join `first` in one call: each of their rows must be a
        stream of `first` (streams may end inside the call, none may start). Returns the steps,
        the streams that ended among them, and the queue item that stopped the merge."""
        steps, finished = [first], []
        members = {id(req) for req, _, _ in first}
        while len(steps) < self.max_frames_per_call:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return steps, finished, None
            if nxt is not None and nxt[0] == "finish":
                finished.append(nxt[1])
            elif nxt is not None and nxt[0] == "decode" and all(id(req) in members for req, _, _ in nxt[1]):
                steps.append(nxt[1])
            else:
                return steps, finished, nxt
        return steps, finished, None

    def _decode(self, steps: list[list[tuple[Request, int, torch.Tensor]]]) -> None:
        """Steps of the same streams (some may end early) -> one Mimi call with T = len(steps) frames per row."""
        t0 = time.perf_counter()
        rows = steps[0]
        dev = rows[0][2].device
        n = len(steps)
        # Rows of streams that end inside the call decode padding (zeros) after their last
        # frame: that output is dropped, and the slot is reset before it is used again.
        batch = torch.zeros(self.max_slots, rows[0][2].shape[0], n, dtype=torch.long, device=dev)  # [slots, 32, T]
        active = torch.zeros(self.max_slots, dtype=torch.bool, device=dev)
        for t, step in enumerate(steps):
            for _, slot, codes in step:
                batch[slot, :, t] = codes.clamp(max=MIMI_CODEBOOK_SIZE - 1)
                active[slot] = True
        self.calls += 1
        self.frames += n
        try:
            pcm = self._stream.decode(batch, active).float().cpu()  # [slots, T * 1920]
        except Exception as e:
            log.exception("Mimi decode failed")
            for req, _, _ in rows:
                self.on_error(req, f"audio decoding failed: {e}")
            return
        finally:
            self.busy_s += time.perf_counter() - t0
        made = Counter(id(req) for step in steps for req, _, _ in step)  # frames per stream in this call
        for req, slot, _ in rows:  # every stream of the call is in its first step; its frames come first
            n = made[id(req)]
            self.output.frame(req, pcm[slot, : n * FRAME_SAMPLES], n)  # a stream's frames go out together
