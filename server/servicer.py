"""csm.v1.Speech: protobuf in, engine events out as protobuf. Thin and torch-free.

Errors are raised as domain exceptions and mapped to statuses by server.errors. A call that
ends early (client cancelled, deadline passed, server stopping the call) cancels its engine
request, which frees the slot within one engine step. A request naming a voice gets the
voice's stored codes at the start of its context (server/voices/synthesis.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

import grpc

from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc, wav
from server.audio_encoding import make_encoder
from server.engine.conversation import Conversation
from server.engine.stream import RequestStream
from server.engine.types import (
    EngineInfo,
    EngineStats,
    EngineUnavailable,
    Finished,
    FinishReason,
    InvalidRequest,
    OutputEncoding,
    SynthesisParams,
)
from server.errors import SynthesisFailed
from server.metrics import Metrics
from server.proto_convert import OUTPUT_ENCODINGS, synthesis_params
from server.voices.registry import VoiceRegistry
from server.voices.synthesis import blame_request_fields, with_voice
from server.voices.types import Voice, VoiceNotFound

log = logging.getLogger(__name__)

FINISH_REASONS = {
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}


class EngineClient(Protocol):
    """What the servicer needs from server.engine.engine.Engine."""

    @property
    def ready(self) -> bool: ...
    def submit(self, params: SynthesisParams) -> RequestStream: ...
    def open_conversation(self, label: str) -> Conversation: ...
    def info(self) -> EngineInfo: ...
    def stats(self) -> EngineStats: ...


class _Chunker:
    """Numbers the chunks of one stream and keeps their sample positions contiguous."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.sequence = 0
        self.emitted_samples = 0  # samples covered by chunks already sent
        self.held_samples = 0  # samples handed to the encoder whose bytes have not come out yet

    def add(self, data: bytes, num_samples: int) -> pb.AudioChunk | None:
        self.held_samples += num_samples
        if not data:
            return None
        ms_per_sample = 1000.0 / self.sample_rate
        chunk = pb.AudioChunk(
            sequence=self.sequence,
            data=data,
            start_sample=self.emitted_samples,
            num_samples=self.held_samples,
            start_ms=self.emitted_samples * ms_per_sample,
            duration_ms=self.held_samples * ms_per_sample,
        )
        self.sequence += 1
        self.emitted_samples += self.held_samples
        self.held_samples = 0
        return chunk

    @property
    def total_samples(self) -> int:
        return self.emitted_samples + self.held_samples


class SpeechServicer(speech_pb2_grpc.SpeechServicer):
    def __init__(self, engine: EngineClient, metrics: Metrics, voices: VoiceRegistry | None = None):
        self._engine = engine
        self._metrics = metrics
        self._voices = voices
        self._accepting = True
        self._draining = asyncio.Event()  # conversations end between turns once it is set

    def stop_accepting(self) -> None:
        """New calls get UNAVAILABLE from now on (the server is draining)."""
        self._accepting = False
        self._draining.set()

    async def Synthesize(self, request, context) -> AsyncIterator[pb.SynthesizeResponse]:
        async for item in self._synthesize(request, context):
            if isinstance(item, pb.AudioChunk):
                yield pb.SynthesizeResponse(audio=item)
            else:
                yield pb.SynthesizeResponse(result=item)

    async def SynthesizeUnary(self, request, context) -> pb.SynthesizeUnaryResponse:
        pieces: list[bytes] = []
        result = None
        async for item in self._synthesize(request, context):
            if isinstance(item, pb.AudioChunk):
                pieces.append(item.data)
            else:
                result = item
        audio = b"".join(pieces)
        if OUTPUT_ENCODINGS.get(request.output.encoding) is OutputEncoding.WAV:
            audio = wav.finalize(audio)
        return pb.SynthesizeUnaryResponse(audio=audio, result=result)

    async def Converse(self, request_iterator, context) -> AsyncIterator[pb.ConverseResponse]:
        """A conversation: server/converse/call.py (imported here: it shares this module's helpers)."""
        from server.converse.call import ConverseCall

        if not self._accepting:
            raise EngineUnavailable("the server is shutting down: open the conversation on another replica")
        async for response in ConverseCall(self._engine, self._voices, self._metrics, self._draining).run(
                request_iterator, context):
            yield response

    async def GetModelInfo(self, request, context) -> pb.ModelInfo:
        info, stats = self._engine.info(), self._engine.stats()
        limits = info.limits
        return pb.ModelInfo(
            model_source=info.model_source,
            preset=info.preset,
            random_weights=info.random_weights,
            device=info.device,
            dtype=info.dtype,
            backbone_layers=info.backbone_layers,
            backbone_dim=info.backbone_dim,
            decoder_layers=info.decoder_layers,
            decoder_dim=info.decoder_dim,
            num_codebooks=info.num_codebooks,
            sample_rate=info.sample_rate,
            frame_rate_hz=info.frame_rate_hz,
            frame_samples=info.frame_samples,
            max_seq_len=limits.max_seq_len,
            max_slots=limits.max_slots,
            max_queue=limits.max_queue,
            max_text_chars=limits.max_text_chars,
            max_context_segments=limits.max_context_segments,
            max_speaker_id=limits.max_speaker_id,
            max_audio_ms=limits.max_audio_ms,
            default_max_audio_ms=limits.default_max_audio_ms,
            watermark_enabled=info.watermark_enabled,
            slots_in_use=stats.slots_in_use,
            requests_waiting=stats.requests_waiting,
            output_encodings=sorted(set(OUTPUT_ENCODINGS) - {pb.AUDIO_ENCODING_UNSPECIFIED}),
        )

    async def _submit(self, params: SynthesisParams, voice_name: str) -> tuple[RequestStream, Voice | None]:
        """engine.submit, with the named voice's segments first in the context."""
        if not voice_name:
            return self._engine.submit(params), None
        if self._voices is None:
            raise VoiceNotFound(f"there is no voice {voice_name!r}: this server stores no voices")
        voice = await asyncio.to_thread(self._voices.resolve, voice_name)
        try:
            return self._engine.submit(with_voice(params, voice)), voice
        except InvalidRequest as exc:
            raise blame_request_fields(exc, voice) from None

    async def _synthesize(self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext):
        """Yields AudioChunk messages, then one SynthesisResult."""
        arrival = time.monotonic()
        if not self._accepting:
            raise EngineUnavailable("the server is shutting down: send the request to another replica")
        params = synthesis_params(request)
        label = params.request_id or uuid.uuid4().hex
        params = replace(params, request_id=label)
        stream, voice = await self._submit(params, request.voice)  # every rule checked; decoding happens on the prep thread
        encoder = make_encoder(OutputEncoding(params.output_encoding), params.output_sample_rate)
        finished: Finished | None = None

        def cancel_unless_finished(_context=None) -> None:
            if finished is None:
                stream.cancel()

        # Runs when the call ends for any reason, even if this generator is never resumed.
        context.add_done_callback(cancel_unless_finished)
        chunker = _Chunker(params.output_sample_rate)
        first_audio_s: float | None = None
        last_chunk_at = arrival
        try:
            async for event in stream:
                if isinstance(event, Finished):
                    finished = event
                    continue
                chunk = chunker.add(encoder.encode(event.pcm), len(event.pcm))
                if chunk is None:
                    continue
                now = time.monotonic()
                if first_audio_s is None:
                    first_audio_s = now - arrival
                    self._metrics.time_to_first_audio.observe(first_audio_s)
                else:
                    self._metrics.inter_chunk_latency.observe(now - last_chunk_at)
                last_chunk_at = now
                yield chunk
        finally:
            if finished is None:
                log.info("request %r ended early (caller cancelled, deadline or error) after %d chunks",
                         label, chunker.sequence)
            self._metrics.observe_finished(finished.reason if finished else FinishReason.CANCELLED)
            cancel_unless_finished()

        if finished.reason is FinishReason.INVALID:
            invalid = InvalidRequest(finished.violations)
            raise invalid if voice is None else blame_request_fields(invalid, voice)
        tail = chunker.add(encoder.flush(), 0)
        if tail is not None:
            yield tail
        total_s = time.monotonic() - arrival
        log.info(
            "request %r: %s, %d frames, %.2f s audio, first audio %s, total %.0f ms",
            label, finished.reason.value, finished.frames, chunker.total_samples / params.output_sample_rate,
            f"{first_audio_s * 1000:.0f} ms" if first_audio_s is not None else "none", total_s * 1000)
        if finished.reason is FinishReason.ERROR:
            raise SynthesisFailed(f"synthesis failed inside the server: {finished.error} (request_id {label!r})")
        if finished.reason is FinishReason.CANCELLED:  # only the server cancels a call still listening
            raise EngineUnavailable(f"request {label!r} was stopped before it finished: {finished.error}; retry it")
        yield pb.SynthesisResult(
            request_id=label,
            finish_reason=FINISH_REASONS[finished.reason],
            frames=finished.frames,
            audio_samples=chunker.total_samples,
            audio_ms=chunker.total_samples * 1000.0 / params.output_sample_rate,
            sample_rate=params.output_sample_rate,
            queue_ms=finished.queue_s * 1000.0,
            time_to_first_audio_ms=(first_audio_s or 0.0) * 1000.0,
            total_ms=total_s * 1000.0,
            watermarked=finished.watermarked,
            prompt_frames=finished.prompt_frames,
        )
