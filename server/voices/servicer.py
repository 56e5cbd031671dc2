"""csm.v1.Voices: create, get, list and delete stored voices. Thin and torch-free.

Every call touches files and CreateVoice decodes and encodes audio, so the registry runs in
worker threads, never on the event loop: CreateVoice on its own bounded queue
(server/voices/create_queue.py, RESOURCE_EXHAUSTED past it), so that creations waiting for the
encoder never hold the threads the other calls share. Errors are domain exceptions, mapped to
statuses by server.errors. A CreateVoice whose caller goes away may still store the voice: a retry
then answers ALREADY_EXISTS, and GetVoice's content_hash tells whether it is the same voice.
"""

from __future__ import annotations

import asyncio

from csm_wire import voices_pb2 as vpb
from csm_wire import voices_pb2_grpc
from server.engine.types import InvalidRequest, Violation
from server.voices.create_queue import CreateQueue
from server.voices.registry import VoiceRegistry
from server.voices.types import Voice, VoiceNotFound, valid_name
from server.voices.wire import decode_segments, voice_to_proto

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class VoicesServicer(voices_pb2_grpc.VoicesServicer):
    def __init__(self, registry: VoiceRegistry):
        self._registry = registry
        self._creates = CreateQueue(registry.limits.max_pending_creates)

    async def CreateVoice(self, request: vpb.CreateVoiceRequest, context) -> vpb.Voice:
        return voice_to_proto(await self._creates.run(self._create, request))

    async def GetVoice(self, request: vpb.GetVoiceRequest, context) -> vpb.Voice:
        return voice_to_proto(await asyncio.to_thread(self._registry.get, request.name))

    async def ListVoices(self, request: vpb.ListVoicesRequest, context) -> vpb.ListVoicesResponse:
        return await asyncio.to_thread(self._list, request)

    async def DeleteVoice(self, request: vpb.DeleteVoiceRequest, context) -> vpb.DeleteVoiceResponse:
        deleted = await asyncio.to_thread(self._registry.delete, request.name)
        if not deleted and not request.allow_missing:
            raise VoiceNotFound(f"there is no voice {request.name!r}")
        return vpb.DeleteVoiceResponse(deleted=deleted)

    def _create(self, request: vpb.CreateVoiceRequest) -> Voice:
        segments = decode_segments(request.segments, self._registry.limits)
        return self._registry.create(request.name, segments, request.description)

    def _list(self, request: vpb.ListVoicesRequest) -> vpb.ListVoicesResponse:
        if request.page_token and not valid_name(request.page_token):
            raise InvalidRequest([Violation("page_token", "not a next_page_token from ListVoices: "
                                                          "send it back as it came, or empty for the first page")])
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = self._registry.page(after=request.page_token, limit=size)
        usage = self._registry.usage()
        limits = self._registry.limits
        return vpb.ListVoicesResponse(
            voices=[voice_to_proto(v) for v in page.voices],
            next_page_token=page.next_after,
            total_voices=usage.voices,
            total_size_bytes=usage.bytes,
            max_voices=limits.max_voices,
            max_size_bytes=limits.max_bytes,
        )
