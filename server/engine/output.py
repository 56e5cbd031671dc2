"""The output workers: chunking, watermark, resampling, hand-off to the stream's consumer.

Chunking policy: without a watermark, frames go out as soon as Mimi decodes them (the frames of
one stream that one Mimi call decoded, usually 1-4, go out together as one chunk).
With the watermark, a stream's first chunk is exactly `first_chunk_frames` frames (small, for
time to first audio) and later chunks exactly `chunk_frames` frames (about a second, enough for
silentcipher to carry its whole message); the remainder is flushed when the stream ends. The
boundaries depend on frame counts only, never on how Mimi happened to group frames, so the
watermark sees the same chunks on every run.

A worker takes everything queued for it at once (it never waits to fill a batch), cuts the
chunks that are ready, and watermarks them all in one `Watermarker.apply_batch` call: chunks of
equal length (the usual case: boundaries are frame counts) go through silentcipher together,
each row computed as if it were alone (silentcipher normalizes by the input's power and its
BatchNorm uses the input's statistics; apply_batch keeps both per row), then delivers them in
queue order. A stream always goes to the same worker (its Mimi row modulo workers), so its
chunks stay in order, while workers run in parallel. A failure here ends that stream only: if
the batched call fails, each chunk is watermarked on its own, and a chunk that fails alone drops
its stream's audio and is reported to the engine, which ends the request; its Finished event
comes back through the usual StreamEnd. An error escaping a worker's loop stops the engine
(server/engine/threads.py).
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
from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE
from csm_core.watermark import Watermarker
from server.engine.messages import Barrier, Control, PcmFrames, Stop, StreamEnd, StreamFailed
from server.engine.threads import pipeline_thread
from server.engine.types import AudioOut, Finished, FinishReason

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _StreamOut:
    """What a worker keeps of one stream between its messages."""

    chunks: list[torch.Tensor] = field(default_factory=list)  # decoded, not yet sent
    frames: int = 0  # frames in `chunks`
    cut_chunks: int = 0
    t_first_audio: float | None = None
    failure: str | None = None  # set when its output failed: audio dropped from here on


@dataclass(eq=False)
class _Worker:
    watermarker: Watermarker | None
    queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    streams: dict[int, _StreamOut] = field(default_factory=dict)  # by stream id
    busy_s: float = 0.0
    thread: threading.Thread | None = None


class OutputStage:
    """`workers` threads, each with its own watermarker replica. On CPU the watermark costs about a
    second of one core per second of audio, so with it on the engine runs one worker per share
    of the cores (server/engine/parts.py)."""

    def __init__(self, watermarker: Watermarker | None, first_chunk_frames: int, chunk_frames: int,
                 report: Callable[[Control], None], torch_threads: int | None = None, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.watermarker = watermarker
        self._report = report  # the engine's control channel
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        marks = [watermarker] + [watermarker.replica() for _ in range(workers - 1)] if watermarker else [None] * workers
        self._workers = [_Worker(mark) for mark in marks]
        for i, w in enumerate(self._workers):
            w.thread = pipeline_thread(f"csm-output-{i}", self._loop, torch_threads, args=(w,), report=report)
            w.thread.start()

    @property
    def busy_s(self) -> float:
        """Time spent watermarking/resampling, summed over the workers (read by stats)."""
        return sum(w.busy_s for w in self._workers)

    # -- Mimi thread ---------------------------------------------------------------------
    def frames(self, msg: PcmFrames) -> None:
        self._workers[msg.stream.row % len(self._workers)].queue.put(msg)

    def end(self, msg: StreamEnd) -> None:
        self._workers[msg.stream.row % len(self._workers)].queue.put(msg)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is delivered."""
        barriers = [Barrier(threading.Event()) for _ in self._workers]
        for w, barrier in zip(self._workers, barriers):
            w.queue.put(barrier)
        deadline = time.monotonic() + timeout
        for barrier in barriers:
            barrier.done.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        for w in self._workers:
            w.queue.put(Stop())
        for w in self._workers:
            w.thread.join(timeout=10)

    # -- output threads ------------------------------------------------------------------
    def _loop(self, w: _Worker) -> None:
        while True:
            batch = [w.queue.get()]
            while True:  # everything queued now: no waiting for more
                try:
                    batch.append(w.queue.get_nowait())
                except queue.Empty:
                    break
            t0 = time.perf_counter()
            stop = self._handle(w, batch)
            w.busy_s += time.perf_counter() - t0
            if stop:
                return

    def _handle(self, w: _Worker, batch: list) -> bool:
        """Cut the ready chunks of every message, watermark them together, deliver in order.
        Returns whether a Stop came (what came before it is handled first)."""
        jobs: list[_Job] = []
        stop = False
        for msg in batch:
            if isinstance(msg, Stop):
                stop = True
                break
            if isinstance(msg, Barrier):
                jobs.append(_Job(msg, None, None))
            elif isinstance(msg, PcmFrames):
                self._cut_frames(w, msg, jobs)
            else:
                self._cut_end(w, msg, jobs)
        chunks = [job for job in jobs if job.audio is not None]
        if w.watermarker is not None and chunks:
            self._watermark(w, chunks)
        for job in jobs:
            self._deliver(job)
        return stop

    def _cut_frames(self, w: _Worker, msg: PcmFrames, jobs: list[_Job]) -> None:
        out = w.streams.setdefault(msg.stream.id, _StreamOut())
        if out.failure is not None:
            return
        out.chunks.append(msg.pcm)
        out.frames += msg.frames
        if w.watermarker is None:  # no boundaries to keep: everything decoded goes out now
            jobs.append(_Job(msg, out, *_cut(out, out.frames)))
        while out.frames and out.frames >= (
                target := self.first_chunk_frames if out.cut_chunks == 0 else self.chunk_frames):
            jobs.append(_Job(msg, out, *_cut(out, target)))

    def _cut_end(self, w: _Worker, end: StreamEnd, jobs: list[_Job]) -> None:
        out = w.streams.pop(end.stream.id, None) or _StreamOut()
        if out.failure is None and out.frames and end.reason is not FinishReason.ERROR:
            jobs.append(_Job(end, out, *_cut(out, out.frames)))
        jobs.append(_Job(end, out, None))

    def _watermark(self, w: _Worker, chunks: list[_Job]) -> None:
        """All chunks in one batched call; if it fails, each on its own (a failure is its stream's)."""
        try:
            marked = w.watermarker.apply_batch([job.audio for job in chunks])
        except Exception:
            log.exception("batched watermark of %d chunks failed: watermarking them one by one", len(chunks))
            marked = []
            for job in chunks:
                try:
                    marked.append(w.watermarker.apply_batch([job.audio])[0])
                except Exception as e:
                    log.exception("output stage failed for request %r", job.msg.stream.label)
                    marked.append(None)
                    job.error = f"audio output failed: {e}"
        for job, audio in zip(chunks, marked):
            job.audio = audio

    def _deliver(self, job: _Job) -> None:
        msg, out = job.msg, job.out
        if isinstance(msg, Barrier):
            msg.done.set()
        elif job.audio is None and job.error is None:  # the stream's end
            self._finish(msg, out)
        elif out.failure is None:
            try:
                if job.error is not None:
                    raise RuntimeError(job.error.removeprefix("audio output failed: "))
                audio = job.audio
                if msg.stream.sample_rate != SAMPLE_RATE:
                    audio = resample(audio, SAMPLE_RATE, msg.stream.sample_rate)
                if out.t_first_audio is None:
                    out.t_first_audio = time.monotonic()
                msg.stream.sink.push(AudioOut(audio.numpy().astype(np.float32, copy=False), job.frames,
                                              self.watermarker is not None))
            except Exception as e:  # this stream only
                if job.error is None:
                    log.exception("output stage failed for request %r", msg.stream.label)
                out.failure, out.chunks, out.frames = f"audio output failed: {e}", [], 0
                if isinstance(msg, PcmFrames):  # an end reports its failure in its Finished
                    self._report(StreamFailed((msg.stream.id,), out.failure))

    def _finish(self, end: StreamEnd, out: _StreamOut) -> None:
        reason, error = end.reason, end.error
        if out.failure is not None:  # the engine may have ended the stream before it heard of the failure
            reason, error = FinishReason.ERROR, out.failure
        end.stream.sink.push(Finished(
            reason=reason, frames=end.frames, prompt_frames=end.prompt_frames,
            queue_s=end.t_admitted - end.t_arrival,
            ttfa_s=None if out.t_first_audio is None else out.t_first_audio - end.t_arrival,
            total_s=end.t_finished - end.t_arrival, watermarked=self.watermarker is not None, error=error,
            context=end.context))


@dataclass(slots=True, eq=False)
class _Job:
    """One thing to deliver, in queue order: a chunk (audio set), a stream's end or a barrier."""

    msg: PcmFrames | StreamEnd | Barrier
    out: _StreamOut | None
    audio: torch.Tensor | None
    frames: int = 0
    error: str | None = None  # its watermark failed


def _cut(out: _StreamOut, frames: int) -> tuple[torch.Tensor, int]:
    """The stream's next `frames` frames as one chunk: [frames * 1920]."""
    pending = torch.cat(out.chunks) if len(out.chunks) > 1 else out.chunks[0]  # [out.frames * 1920]
    audio, rest = pending[: frames * FRAME_SAMPLES], pending[frames * FRAME_SAMPLES :]
    out.chunks, out.frames = ([rest], out.frames - frames) if rest.numel() else ([], 0)
    out.cut_chunks += 1
    return audio, frames
