"""One request's audio on its way out, the same for every transport. Torch-free.

`AudioDelivery` reads a RequestStream's events, encodes the audio, and yields the encoded
pieces; it measures time to first audio and the gaps between pieces, records the request's
end in the metrics, logs one line per request, and cancels the engine request if the caller
stops reading early. The gRPC servicer wraps the pieces in AudioChunk messages; the HTTP API
writes them to the response body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.audio_encoding import Encoder
from server.engine.stream import RequestStream
from server.engine.types import EngineUnavailable, Finished, FinishReason, InvalidRequest
from server.errors import ReaderTooSlow, SynthesisFailed
from server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Piece:
    data: bytes  # never empty
    samples: int  # samples handed to the encoder since the previous piece (at the output rate)


class AudioDelivery:
    def __init__(self, stream: RequestStream, encoder: Encoder, metrics: Metrics, *, request_id: str,
                 sample_rate: int, arrival: float):
        self.request_id = request_id
        self.sample_rate = sample_rate
        self.arrival = arrival  # time.monotonic() when the request arrived
        self.finished: Finished | None = None
        self.first_audio_s: float | None = None  # arrival -> first piece
        self.total_samples = 0  # samples handed to the encoder
        self.pieces_sent = 0
        self._stream = stream
        self._encoder = encoder
        self._metrics = metrics

    def cancel(self) -> None:
        """Stops the engine request unless it has finished (safe to call at any time, more than once)."""
        if self.finished is None:
            self._stream.cancel()

    async def _encode(self, pcm) -> bytes:
        """Compressing encoders run on a worker thread (FFmpeg releases the GIL), so that many
        streams' encoding neither stalls the event loop nor waits on one core."""
        if self._encoder.cpu_bound:
            return await asyncio.to_thread(self._encoder.encode, pcm)
        return self._encoder.encode(pcm)

    async def pieces(self) -> AsyncIterator[Piece]:
        """The encoded audio. Ends normally after EOS or the length limit; raises InvalidRequest
        when the request broke a rule found once decoded, SynthesisFailed when the engine failed
        it, ReaderTooSlow when its reader stalled, EngineUnavailable when the server stopped it."""
        held = 0  # samples encoded whose bytes have not come out yet
        last_piece_at = self.arrival
        try:
            async for event in self._stream:
                if isinstance(event, Finished):
                    self.finished = event
                    continue
                data = await self._encode(event.pcm)
                held += len(event.pcm)
                self.total_samples += len(event.pcm)
                if not data:
                    continue
                now = time.monotonic()
                if self.first_audio_s is None:
                    self.first_audio_s = now - self.arrival
                    self._metrics.time_to_first_audio.observe(self.first_audio_s)
                else:
                    self._metrics.inter_chunk_latency.observe(now - last_piece_at)
                last_piece_at = now
                self.pieces_sent += 1
                yield Piece(data, held)
                held = 0
        finally:
            if self.finished is None:
                log.info("request %r ended early (caller cancelled, deadline or error) after %d pieces",
                         self.request_id, self.pieces_sent)
                self._metrics.observe_finished(FinishReason.CANCELLED)
                self._stream.cancel()

        finished = self.finished
        failure = _FAILED.get(finished.reason)
        if failure is not None:
            self._metrics.observe_finished(finished.reason)
            raise failure(finished, self.request_id)
        tail = await asyncio.to_thread(self._encoder.flush) if self._encoder.cpu_bound else self._encoder.flush()
        if tail:
            self.pieces_sent += 1
            yield Piece(tail, held)
        total_s = time.monotonic() - self.arrival
        audio_s = self.total_samples / self.sample_rate
        self._metrics.observe_request(finished, total_s, audio_s)
        first = f"{self.first_audio_s * 1000:.0f} ms" if self.first_audio_s is not None else "none"
        log.info("request %r: %s, %d frames, %.2f s audio, first audio %s, total %.0f ms",
                 self.request_id, finished.reason.value, finished.frames, audio_s, first, total_s * 1000)


# How a request that did not end by EOS or length reaches its caller.
_FAILED = {
    FinishReason.INVALID: lambda f, rid: InvalidRequest(f.violations),
    FinishReason.ERROR: lambda f, rid: SynthesisFailed(f"synthesis failed inside the server: {f.error} "
                                                       f"(request_id {rid!r})"),
    FinishReason.STALLED: lambda f, rid: ReaderTooSlow(f"request {rid!r} was stopped: {f.error}; "
                                                       "read the stream as it arrives"),
    # only the server cancels a request whose caller still listens
    FinishReason.CANCELLED: lambda f, rid: EngineUnavailable(f"request {rid!r} was stopped before it finished "
                                                             f"({f.error}): retry it"),
}
