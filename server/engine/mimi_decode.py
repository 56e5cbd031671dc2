"""The Mimi thread: streaming decode of every stream at once (a row each), pipelined with the model steps.

The engine thread hands over each step's frames (`decode`) and goes on with the next step while
this thread decodes earlier ones: on CPU the model step and Mimi overlap instead of adding up.
When Mimi falls behind, the steps waiting in the queue are decoded together, several frames
per row in one call (Mimi's per-call cost dominates small calls), so the pipeline batches in
time exactly when it needs to and keeps one frame per call otherwise.

Steps and stream ends travel through one FIFO queue. A merged call may span streams that end
inside it (their rows get padding frames whose output is dropped, and their end is passed on
after the call), but no stream may start inside it: a new stream's first frame always starts a
call, and its row's state is reset just before. Backpressure is the paced credits of
server/engine/pacing.py, and only those: `decode` takes one, a call gives its steps' back.
If this thread stops on an error, the credits fail, so the engine thread never waits for a
call that will not come, and the engine stops (server/engine/threads.py).

On CUDA the calls run on a CUDA stream of their own, so Mimi kernels overlap the model's: a call
first waits (on the GPU, no host sync) for what the default stream has queued (the steps' codes,
the decoder's state set-up), and its one host sync is its own stream's, when the audio is copied
out. moshi's exec-mask CUDA graphs are captured when the stream decoder is built
(csm_core/mimi.py), on the building thread, before this thread starts.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import torch

from csm_core.constants import FRAME_SAMPLES, MIMI_CODEBOOK_SIZE, NUM_CODEBOOKS
from csm_core.mimi import MimiCodec
from server.engine.messages import Barrier, Control, MimiStep, PcmFrames, Stop, StreamEnd, StreamFailed
from server.engine.output import OutputStage
from server.engine.pacing import PACE, CallCostModel, PacedCredits
from server.engine.threads import PipelineStopped, pipeline_thread
from server.engine.types import FinishReason

log = logging.getLogger(__name__)


class MimiDecoder:
    def __init__(self, codec: MimiCodec, num_rows: int, output: OutputStage, report: Callable[[Control], None],
                 max_frames_per_call: int, torch_threads: int | None = None):
        self.num_rows = num_rows  # one per stream with a slot or preempted (server/engine/scheduler.py)
        self.output = output
        self._report = report  # the engine's control channel
        self.max_frames_per_call = max_frames_per_call
        self._stream = codec.stream_decoder(num_rows)
        self._device = codec.device
        self._cuda_stream = torch.cuda.Stream(self._device) if self._device.type == "cuda" else None
        self._queue: queue.SimpleQueue[MimiStep | StreamEnd | Barrier | Stop] = queue.SimpleQueue()
        # A call's worth of steps may wait: when Mimi is the bottleneck the next full call is
        # queued by the time one is decoded, and the engine refills the queue step by step.
        self._credits = PacedCredits(max_frames_per_call)
        self._cost = CallCostModel()
        # Streams whose audio failed here, by id: their later frames are dropped and their end
        # says why (the engine may end one by length before it hears of the failure).
        self._failed: dict[int, str] = {}
        self.busy_s = 0.0  # Mimi decode time (read by stats)
        self.calls = 0
        self.frames = 0  # step-frames decoded (a call of T steps counts T)
        self._thread = pipeline_thread("csm-mimi", self._loop, torch_threads, report=report,
                                       on_failure=self._stopped)
        self._thread.start()

    # -- engine thread -----------------------------------------------------------------
    def decode(self, step: MimiStep) -> None:
        """Queue one step's frames; waits (paced) while a call's worth of steps is queued."""
        self._credits.acquire()
        self._queue.put(step)

    def end(self, end: StreamEnd) -> None:
        """A stream's end, after its last frames."""
        self._queue.put(end)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far has been delivered to the streams."""
        done = threading.Event()
        self._queue.put(Barrier(done))
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(Stop())
        self._thread.join(timeout=10)
        self._stream.close()

    # -- Mimi thread -------------------------------------------------------------------
    @torch.inference_mode()
    def _loop(self) -> None:
        carry = None
        while True:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if isinstance(item, Stop):
                return
            if isinstance(item, StreamEnd):
                self._end(item)
            elif isinstance(item, Barrier):
                self.output.flush()
                item.done.set()
            else:
                steps, ended, carry = self._gather(item)
                shape = (max(row.stream.row for row in item.rows) + 1, len(steps))
                self._credits.release(len(steps), PACE * self._cost.expected_step_s(shape))
                busy = self.busy_s
                self._decode(steps)
                self._cost.observe(shape, (self.busy_s - busy) / len(steps))
                for end in ended:  # after their last frames
                    self._end(end)

    def _stopped(self, error: BaseException) -> None:
        """This thread stops on `error`: a `decode` waiting for credits, and every later one, raises."""
        self._credits.fail(PipelineStopped.of(self._thread.name, error))

    def _fail(self, ids: tuple[int, ...], error: str) -> None:
        for sid in ids:
            self._failed.setdefault(sid, error)
        self._report(StreamFailed(ids, error))

    def _end(self, end: StreamEnd) -> None:
        error = self._failed.pop(end.stream.id, None)
        self.output.end(end if error is None else replace(end, reason=FinishReason.ERROR, error=error))

    def _gather(self, first: MimiStep) -> tuple[list[MimiStep], list[StreamEnd], object | None]:
        """The queued steps that can join `first` in one call: each of their rows must be a
        stream of `first`, none its first frame. Returns the steps, the stream ends among them,
        and the queue item that stopped the merge."""
        steps, ended = [first], []
        members = {row.stream.id for row in first.rows}
        while len(steps) < self.max_frames_per_call:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return steps, ended, None
            if isinstance(nxt, StreamEnd):
                ended.append(nxt)
            elif isinstance(nxt, MimiStep) and all(r.stream.id in members and not r.first for r in nxt.rows):
                steps.append(nxt)
            else:
                return steps, ended, nxt
        return steps, ended, None

    def _decode(self, steps: list[MimiStep]) -> None:
        """Steps of the same streams (some may end early) -> one Mimi call with T = len(steps) frames per row.
        A row whose codes are not a frame fails its stream alone; a failure of the batched call
        fails the streams in it, as a failure of the batched model step does."""
        t0 = time.perf_counter()
        n = len(steps)
        bad: dict[int, str] = {}  # stream id -> what is wrong with its codes
        per_step: list[tuple[list[int], list[torch.Tensor]]] = []  # rows and codes of each step
        for step in steps:
            rows, codes = [], []
            for row in step.rows:
                if row.stream.id in self._failed:
                    continue
                problem = _frame_problem(row.codes)
                if problem is not None:
                    bad.setdefault(row.stream.id, f"audio decoding failed: {problem}")
                    continue
                rows.append(row.stream.row)
                codes.append(row.codes)
            per_step.append((rows, codes))
        for sid, error in bad.items():
            self._fail((sid,), error)
        rows = [row for row in steps[0].rows if row.stream.id not in self._failed]
        if not rows:
            return
        self.calls += 1
        self.frames += n
        try:
            with self._on_stream():
                batch, active = self._batch(per_step)
                starting = [row.stream.row for row in rows if row.first]
                if starting:
                    self._stream.reset(starting)
                live = max(row.stream.row for row in rows) + 1  # rows past the last live one do not run
                pcm = self._stream.decode(batch, active, live).float().cpu()  # [rows, T * 1920]
        except Exception as e:
            log.exception("Mimi decode failed")
            self._fail(tuple(row.stream.id for row in rows), f"audio decoding failed: {e}")
            return
        finally:
            self.busy_s += time.perf_counter() - t0
        made = Counter(row.stream.id for step in steps for row in step.rows)  # frames per stream in this call
        for row in rows:  # every stream of the call is in its first step; its frames come first
            frames = made[row.stream.id]
            self.output.frames(PcmFrames(row.stream, pcm[row.stream.row, : frames * FRAME_SAMPLES], frames))

    def _on_stream(self):
        """The call's CUDA stream (after the default stream's queued work), or nothing on CPU."""
        if self._cuda_stream is None:
            return contextlib.nullcontext()
        self._cuda_stream.wait_stream(torch.cuda.default_stream(self._device))
        return torch.cuda.stream(self._cuda_stream)

    def _batch(self, per_step: list[tuple[list[int], list[torch.Tensor]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The call's codes [rows, 32, T] and which rows advance [rows]: one copy per step.
        Rows of streams that end inside the call decode padding (zeros) after their last frame:
        that output is dropped, and the row is reset before it is used again."""
        batch = torch.zeros(self.num_rows, NUM_CODEBOOKS, len(per_step), dtype=torch.long, device=self._device)
        active = torch.zeros(self.num_rows, dtype=torch.bool, device=self._device)
        for t, (rows, codes) in enumerate(per_step):
            if rows:
                index = torch.tensor(rows, device=self._device)
                batch[index, :, t] = torch.stack(codes).to(self._device, torch.long).clamp(max=MIMI_CODEBOOK_SIZE - 1)
                active[index] = True
        return batch, active


def _frame_problem(codes: torch.Tensor) -> str | None:
    """Why `codes` is not one frame of Mimi codes, or None (shape and type only: no device sync)."""
    if codes.shape != (NUM_CODEBOOKS,) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        return f"a frame must be {NUM_CODEBOOKS} integer codes, got {codes.dtype} {list(codes.shape)}"
    return None
