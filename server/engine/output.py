"""The per-stream output stage, on its own thread: chunking, watermark, resampling, hand-off.

Chunking policy: without a watermark every frame (80 ms) goes out as soon as Mimi decodes it.
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
from dataclasses import dataclass

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


class OutputStage:
    def __init__(self, watermarker: Watermarker | None, first_chunk_frames: int, chunk_frames: int,
                 on_error: Callable[[Request, str], None] | None = None, torch_threads: int | None = None):
        self.watermarker = watermarker
        self._torch_threads = torch_threads
        self.on_error = on_error  # tells the engine to stop generating for a stream that failed here
        self.first_chunk_frames = first_chunk_frames if watermarker else 1
        self.chunk_frames = chunk_frames if watermarker else 1
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[str, _Pending] = {}
        self._failed: set[str] = set()  # streams already ended with an error here
        self._thread = threading.Thread(target=self._loop, name="csm-output", daemon=True)
        self.busy_s = 0.0  # time spent watermarking/resampling (read by stats)
        self._thread.start()

    # -- engine thread -----------------------------------------------------------------
    def frame(self, req: Request, pcm: torch.Tensor) -> None:
        self._queue.put(("frame", req, pcm))

    def finish(self, req: Request) -> None:
        self._queue.put(("finish", req, None))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is delivered."""
        done = threading.Event()
        self._queue.put(("barrier", done, None))
        done.wait(timeout)

    # -- output thread -----------------------------------------------------------------
    def _loop(self) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, req, pcm = item
            if kind == "barrier":
                req.set()
                continue
            t0 = time.perf_counter()
            if req.id in self._failed:
                if kind == "finish":
                    self._failed.discard(req.id)
                continue
            try:
                if kind == "frame":
                    self._on_frame(req, pcm)
                else:
                    self._on_finish(req)
            except Exception as e:  # a failure here ends this stream only
                log.exception("output stage failed for request %s", req.id)
                self._pending.pop(req.id, None)
                self._failed.add(req.id)
                req.stream.push(_finished(req, FinishReason.ERROR, f"audio output failed: {e}", False))
                if self.on_error is not None and kind == "frame":
                    self.on_error(req, f"audio output failed: {e}")
            self.busy_s += time.perf_counter() - t0

    def _on_frame(self, req: Request, pcm: torch.Tensor) -> None:
        p = self._pending.setdefault(req.id, _Pending([]))
        p.chunks.append(pcm)
        p.frames += 1
        target = self.first_chunk_frames if p.sent_chunks == 0 else self.chunk_frames
        if p.frames >= target:
            self._emit(req, p)

    def _on_finish(self, req: Request) -> None:
        p = self._pending.pop(req.id, None)
        if p is not None and p.frames and req.finish_reason is not FinishReason.ERROR:
            self._emit(req, p)
        req.stream.push(_finished(req, req.finish_reason, req.error, self.watermarker is not None))

    def _emit(self, req: Request, p: _Pending) -> None:
        audio = torch.cat(p.chunks)  # [frames * 1920]
        if self.watermarker is not None:
            audio = self.watermarker.apply(audio)
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
