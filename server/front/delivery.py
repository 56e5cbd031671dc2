"""One response's audio on its way out, the same for every transport. Torch-free.

`AudioDelivery` reads engine streams' events (one request's, or the pieces of a conversation's
turn in order), encodes their audio with one encoder (compressing encoders on a worker thread,
never on the event loop) and yields the encoded pieces. It pulls an event only when the
transport asks for the next piece, so a client that stops reading stops the pulling: the
stream's unread audio grows and the engine pauses the request (server/engine/stream.py), the
same bound for every transport. It measures time to first audio, the gaps between pieces and
the response's worst playback gap (csm_core/continuity.py, at the hand-off to the transport),
records the response's end in the metrics with one log line, and cancels the engine stream if
the transport stops early. Its Summary (server/front/engine_client.py) is the final result
every transport reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from csm_core.continuity import WorstGap
from server.audio_encoding import Encoder
from server.engine.stream import RequestStream
from server.engine.types import Finished, FinishReason, InvalidRequest
from server.front.engine_client import Summary, failure
from server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Piece:
    data: bytes  # never empty
    samples: int  # samples handed to the encoder since the previous piece (at the output rate)


class AudioDelivery:
    def __init__(self, encoder: Encoder, metrics: Metrics, *, request_id: str, sample_rate: int, arrival: float,
                 stream: RequestStream | None = None,
                 blame: Callable[[InvalidRequest], InvalidRequest] = lambda exc: exc):
        """`stream`: a whole request's stream (`audio()`); a conversation's turn hands its streams
        to `pieces()` one by one. `blame`: names the engine's violations as the caller's request
        names its fields."""
        self.request_id = request_id
        self.sample_rate = sample_rate
        self.arrival = arrival  # time.monotonic() when the request arrived
        self.finished: Finished | None = None  # the end of the last stream read
        self.first_audio_s: float | None = None  # arrival -> first piece
        self.total_samples = 0  # samples handed to the encoder
        self.pieces_sent = 0
        self._encoder = encoder
        self._metrics = metrics
        self._stream = stream
        self._held = 0  # samples encoded whose bytes have not come out yet
        self._last_piece_at = arrival
        self.playback = WorstGap()  # fed every piece as it is handed to the transport
        self._frames = 0
        self._first: Finished | None = None
        self._recorded = False
        self._blame = blame
        self.result: Summary | None = None  # set once recorded

    def cancel(self) -> None:
        """Stops the engine stream being read unless it has finished (safe at any time, more than once)."""
        if self._stream is not None and self.finished is None:
            self._stream.cancel()

    async def audio(self) -> AsyncIterator[Piece]:
        """The whole request's audio. Ends normally after EOS or the length limit, with `result`
        set; raises what `failure` says otherwise (InvalidRequest, SynthesisFailed, ReaderTooSlow,
        EngineUnavailable)."""
        async for piece in self.pieces(self._stream):
            yield piece
        problem = failure(self.finished, self.request_id)
        if problem is not None:
            self.record(self.finished.reason)
            raise self._blame(problem) if isinstance(problem, InvalidRequest) else problem
        tail = await self.tail()
        if tail is not None:
            yield tail
        self.record(self.finished.reason)

    async def pieces(self, stream: RequestStream) -> AsyncIterator[Piece]:
        """The encoded audio of one engine stream; `finished` holds its end afterwards. A
        consumer that stops early cancels the stream and the response is recorded as cancelled."""
        self._stream, self.finished = stream, None
        try:
            async for event in stream:
                if isinstance(event, Finished):
                    self._ended(event)
                    continue
                data = await self._run(self._encoder.encode, event.pcm)
                self._held += len(event.pcm)
                self.total_samples += len(event.pcm)
                if data:
                    yield self._piece(data)
        finally:
            if self.finished is None:
                stream.cancel()
                if not self._recorded:
                    self._recorded = True
                    log.info("request %r ended early (caller cancelled, deadline or error) after %d pieces",
                             self.request_id, self.pieces_sent)
                    self._metrics.observe_finished(FinishReason.CANCELLED)

    async def tail(self) -> Piece | None:
        """What the encoder still holds, once the response's last stream has ended."""
        data = await self._run(self._encoder.flush)
        return self._piece(data) if data else None

    def summary(self, reason: FinishReason) -> Summary:
        first = self._first
        return Summary(
            request_id=self.request_id, reason=reason, frames=self._frames,
            prompt_frames=first.prompt_frames if first else 0, audio_samples=self.total_samples,
            sample_rate=self.sample_rate, queue_s=first.queue_s if first else 0.0, first_audio_s=self.first_audio_s,
            total_s=time.monotonic() - self.arrival, watermarked=self.finished.watermarked if self.finished else False)

    def record(self, reason: FinishReason) -> Summary:
        """The response's end, in the metrics and the log, once; its summary."""
        if self._recorded:
            return self.result or self.summary(reason)
        self._recorded = True
        summary = self.result = self.summary(reason)
        self._metrics.observe_request(summary)
        if self.playback.started:
            self._metrics.observe_playback(self.playback.worst_s)
        first = f"{summary.first_audio_s * 1000:.0f} ms" if summary.first_audio_s is not None else "none"
        log.info("request %r: %s, %d frames, %.2f s audio, first audio %s, total %.0f ms", self.request_id,
                 reason.value, summary.frames, summary.audio_s, first, summary.total_s * 1000)
        return summary

    def _ended(self, event: Finished) -> None:
        self.finished = event
        self._frames += event.frames
        if self._first is None:
            self._first = event

    def _piece(self, data: bytes) -> Piece:
        now = time.monotonic()
        if self.first_audio_s is None:
            self.first_audio_s = now - self.arrival
            self._metrics.time_to_first_audio.observe(self.first_audio_s)
        else:
            self._metrics.inter_chunk_latency.observe(now - self._last_piece_at)
        self._last_piece_at = now
        self.pieces_sent += 1
        self.playback.arrive(now, self._held / self.sample_rate)
        piece = Piece(data, self._held)
        self._held = 0
        return piece

    async def _run(self, fn, *args) -> bytes:
        """Compressing encoders run on a worker thread (FFmpeg releases the GIL), so that many
        streams' encoding neither stalls the event loop nor waits on one core."""
        if self._encoder.cpu_bound:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)
