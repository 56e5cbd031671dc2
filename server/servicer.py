"""csm.v1.Speech: protobuf in, the front door's events out as protobuf. Thin and torch-free.

Requests go through the front door (server/front/door.py) like every other transport's: the
same drain switch, voice lookup, submission and delivery, as the tenant the call's token names
(server/auth.py, caller_tenant); errors are raised as domain exceptions and mapped to statuses
by server/errors.py. A call that ends early (client cancelled, deadline passed, server stopping
the call) cancels its engine request, which frees the slot within one engine step. Converse is
its own front end (server/converse/call.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import grpc

from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc, wav
from server.audio_encoding import make_encoder
from server.auth import caller_tenant
from server.chunks import Chunker
from server.engine.types import OutputEncoding
from server.front.door import FrontDoor
from server.proto_convert import OUTPUT_ENCODINGS, synthesis_params, synthesis_result


# One Converse call: (the client's messages, the call's context) -> the server's messages.
ConverseHandler = Callable[[AsyncIterator[pb.ConverseRequest], grpc.aio.ServicerContext],
                           AsyncIterator[pb.ConverseResponse]]


class SpeechServicer(speech_pb2_grpc.SpeechServicer):
    def __init__(self, door: FrontDoor, converse: ConverseHandler):
        """`converse`: the Converse front end (server/converse/call.py), wired in by server/app.py."""
        self._door = door
        self._converse = converse

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
        async for response in self._converse(request_iterator, context):
            yield response

    async def GetModelInfo(self, request, context) -> pb.ModelInfo:
        info, stats = self._door.engine.info(), self._door.engine.stats()
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

    async def _synthesize(self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext):
        """Yields AudioChunk messages, then one SynthesisResult."""
        arrival = time.monotonic()
        self._door.check_open()
        params = synthesis_params(request)
        params = replace(params, request_id=params.request_id or uuid.uuid4().hex)
        tenant = caller_tenant()
        voice = await self._door.stored_voice(tenant, request.voice)
        sub = self._door.submit(tenant, params, voice)  # every rule checked; decoding happens on the prep thread
        rate = params.output_sample_rate
        delivery = self._door.deliver(sub, make_encoder(OutputEncoding(params.output_encoding), rate),
                                      sample_rate=rate, arrival=arrival)
        # Runs when the call ends for any reason, even if this generator is never resumed.
        context.add_done_callback(lambda _context: delivery.cancel())
        chunks = Chunker(rate)
        async for piece in delivery.audio():
            yield chunks.add(piece.data, piece.samples)
        yield synthesis_result(delivery.result)
