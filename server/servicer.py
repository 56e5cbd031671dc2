"""csm.v1.Speech: protobuf in, engine events out as protobuf. Thin and torch-free.

Errors are raised as domain exceptions and mapped to statuses by server.errors. The audio
itself leaves through server/delivery.py, as it does over HTTP. A call that ends early
(client cancelled, deadline passed, server stopping the call) cancels its engine request,
which frees the slot within one engine step. A request naming a voice gets the voice's stored
codes at the start of its context (server/voices/synthesis.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

import grpc

from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc, wav
from server.audio_encoding import make_encoder
from server.chunks import Chunker
from server.delivery import AudioDelivery
from server.engine.conversation import Conversation
from server.engine.stream import RequestStream
from server.engine.types import (
    EngineInfo, EngineStats, EngineUnavailable, FinishReason, InvalidRequest, OutputEncoding, SynthesisParams,
)
from server.metrics import Metrics
from server.proto_convert import OUTPUT_ENCODINGS, synthesis_params
from server.voices.registry import VoiceRegistry
from server.voices.synthesis import blame_request_fields, with_voice
from server.voices.types import Voice, VoiceNotFound

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
        rate = params.output_sample_rate
        delivery = AudioDelivery(stream, encoder, self._metrics, request_id=label, sample_rate=rate, arrival=arrival)
        # Runs when the call ends for any reason, even if this generator is never resumed.
        context.add_done_callback(lambda _context: delivery.cancel())
        chunks = Chunker(rate)
        try:
            async for piece in delivery.pieces():
                yield chunks.add(piece.data, piece.samples)
        except InvalidRequest as invalid:  # found once decoded: name the request's own fields
            raise invalid if voice is None else blame_request_fields(invalid, voice) from None
        finished = delivery.finished
        yield pb.SynthesisResult(
            request_id=label,
            finish_reason=FINISH_REASONS[finished.reason],
            frames=finished.frames,
            audio_samples=delivery.total_samples,
            audio_ms=delivery.total_samples * 1000.0 / rate,
            sample_rate=rate,
            queue_ms=finished.queue_s * 1000.0,
            time_to_first_audio_ms=(delivery.first_audio_s or 0.0) * 1000.0,
            total_ms=(time.monotonic() - arrival) * 1000.0,
            watermarked=finished.watermarked,
            prompt_frames=finished.prompt_frames,
        )
