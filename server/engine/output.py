"""The per-stream output stage, on threads of its own: chunking, watermark, resampling, hand-off.

Chunking policy: without a watermark, frames go out as soon as Mimi decodes them (the frames of
one stream that one Mimi call decoded, usually 1-4, go out together as one chunk).
With the watermark, a stream's first chunk is `first_chunk_frames` frames (small, for time
to first audio) and later chunks `chunk_frames` frames (about a second, enough for
silentcipher to carry its whole message); the remainder is flushed when the stream ends.
Each chunk is watermarked on its own, for its own stream only (silentcipher normalizes by the
input's power and its BatchNorm uses the input's statistics, so streams are never mixed).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from csm_core.audio_io import resample
from csm_core.constants import SAMPLE_RATE
from csm_core.watermark import Watermarker
from server.engine.request import Request
from server.engine.types import AudioOut, Finished, FinishReason

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    chunks: list[torch.Tensor]
    frames: int = 0
    sent_chunks: int = 0


@dataclass(eq=False)
class _Worker:
    """One output thread and the streams it owns (by slot), with a watermarker of its own."""

    watermarker: Watermarker | None
    queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    pending: dict[str, _Pending] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # streams already ended with an error here
    busy_s: float = 0.0
    thread: threading.Thread | None = None


class OutputStage:
    """`workers` threads; a stream always goes to the same one (slot modulo workers), so its
    chunks stay in order, while different streams are watermarked in parallel. On CPU the
    watermark costs about a second of one core per second of audio, so with it on the engine
    runs one worker per share of the cores (server/engine/engine.py)."""

    def __init__(self, watermarker: Watermarker | None, first_chunk_frames: int, chunk_frames: int,
                 on_error: Callable[[Request, str], None] | None = None, torch_threads: int | None = None,
                 workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.watermarker = watermarker
        self._torch_threads = torch_threads
        self.on_error = on_error  # tells the engine to stop generating for a stream that failed here
        self.first_chunk_frames = first_chunk_frames if watermarker else 1
        self.chunk_frames = chunk_frames if watermarker else 1
        marks = [watermarker] + [watermarker.replica() for _ in range(workers - 1)] if watermarker else [None] * workers
        self._workers = [_Worker(mark) for mark in marks]
        for i, w in enumerate(self._workers):
            w.thread = threading.Thread(target=self._loop, args=(w,), name=f"csm-output-{i}", daemon=True)
            w.thread.start()

    @property
    def busy_s(self) -> float:
        """Time spent watermarking/resampling, summed over the workers (read by stats)."""
        return sum(w.busy_s for w in self._workers)

    def _worker(self, req: Request) -> _Worker:
        return self._workers[(req.slot or 0) % len(self._workers)]

    # -- engine and Mimi threads -------------------------------------------------------
    def frame(self, req: Request, pcm: torch.Tensor, frames: int = 1) -> None:
        """`frames` consecutive frames of one stream, pcm [frames * 1920]."""
        self._worker(req).queue.put(("frame", req, (pcm, frames)))

    def finish(self, req: Request) -> None:
        self._worker(req).queue.put(("finish", req, None))

    def close(self) -> None:
        for w in self._workers:
            w.queue.put(None)
        for w in self._workers:
            w.thread.join(timeout=10)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is delivered."""
        barriers = []
        for w in self._workers:
            done = threading.Event()
            w.queue.put(("barrier", done, None))
            barriers.append(done)
        deadline = time.monotonic() + timeout
        for done in barriers:
            done.wait(max(0.0, deadline - time.monotonic()))

    # -- output threads ----------------------------------------------------------------
    def _loop(self, w: _Worker) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        while True:
            item = w.queue.get()
            if item is None:
                return
            kind, req, payload = item
            if kind == "barrier":
                req.set()
                continue
            t0 = time.perf_counter()
            if req.id in w.failed:
                if kind == "finish":
                    w.failed.discard(req.id)
                continue
            try:
                if kind == "frame":
                    self._on_frame(w, req, *payload)
                else:
                    self._on_finish(w, req)
            except Exception as e:  # a failure here ends this stream only
                log.exception("output stage failed for request %s", req.id)
                w.pending.pop(req.id, None)
                w.failed.add(req.id)
                req.stream.push(_finished(req, FinishReason.ERROR, f"audio output failed: {e}", False))
                if self.on_error is not None and kind == "frame":
                    self.on_error(req, f"audio output failed: {e}")
            w.busy_s += time.perf_counter() - t0

    def _on_frame(self, w: _Worker, req: Request, pcm: torch.Tensor, frames: int) -> None:
        p = w.pending.setdefault(req.id, _Pending([]))
        p.chunks.append(pcm)
        p.frames += frames
        target = self.first_chunk_frames if p.sent_chunks == 0 else self.chunk_frames
        if p.frames >= target:
            self._emit(w, req, p)

    def _on_finish(self, w: _Worker, req: Request) -> None:
        p = w.pending.pop(req.id, None)
        if p is not None and p.frames and req.finish_reason is not FinishReason.ERROR:
            self._emit(w, req, p)
        req.stream.push(_finished(req, req.finish_reason, req.error, self.watermarker is not None))

    def _emit(self, w: _Worker, req: Request, p: _Pending) -> None:
        audio = torch.cat(p.chunks)  # [frames * 1920]
        if w.watermarker is not None:
            audio = w.watermarker.apply(audio)
        if req.params.output_sample_rate != SAMPLE_RATE:
            audio = resample(audio, SAMPLE_RATE, req.params.output_sample_rate)
        if req.t_first_audio is None:
            req.t_first_audio = time.monotonic()
        req.stream.push(AudioOut(audio.numpy().astype(np.float32, copy=False), p.frames, self.watermarker is not None))
        p.chunks, p.frames = [], 0
        p.sent_chunks += 1


def _finished(req: Request, reason: FinishReason, error: str | None, watermarked: bool) -> Finished:
    end = req.t_finished or time.monotonic()
    admitted = req.t_admitted or end
    return Finished(
        reason=reason,
        frames=req.num_frames,
        prompt_frames=req.prompt_len,
        queue_s=admitted - req.t_arrival,
        ttfa_s=None if req.t_first_audio is None else req.t_first_audio - req.t_arrival,
        total_s=end - req.t_arrival,
        watermarked=watermarked,
        error=error,
    )
