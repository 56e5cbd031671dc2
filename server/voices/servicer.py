"""csm.v1.Voices: create, get, list and delete stored voices. Thin and torch-free.

Every call works in the namespace of the tenant its token names (server/auth.py, caller_tenant;
server/voices/tenants.py): another tenant's voices are not listed, read or deleted, and a name
one tenant uses is free for every other.

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
from server.auth import caller_tenant
from server.engine.types import InvalidRequest, Violation
from server.voices.create_queue import CreateQueue
from server.voices.registry import VoiceRegistry
from server.voices.tenants import TenantVoices
from server.voices.types import Voice, VoiceNotFound, valid_name
from server.voices.wire import decode_segments, voice_to_proto

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class VoicesServicer(voices_pb2_grpc.VoicesServicer):
    def __init__(self, registry: VoiceRegistry, tenants: TenantVoices | None = None,
                 creates: CreateQueue | None = None):
        """`registry`: the voices directory's; each tenant's registry is made from it. Creations
        of every tenant share one bounded queue (the encoder is one). `tenants`, `creates`: the
        ones the HTTP API's voices share (server/openai_voices.py); None: made here."""
        self._tenants = tenants or TenantVoices(registry)
        self._creates = creates or CreateQueue(registry.limits.max_pending_creates)

    # The tenant is read on the call's task, where the interceptor set it, and handed to the thread.
    async def CreateVoice(self, request: vpb.CreateVoiceRequest, context) -> vpb.Voice:
        return voice_to_proto(await self._creates.run(self._create, caller_tenant(), request))

    async def GetVoice(self, request: vpb.GetVoiceRequest, context) -> vpb.Voice:
        return voice_to_proto(await asyncio.to_thread(self._get, caller_tenant(), request.name))

    async def ListVoices(self, request: vpb.ListVoicesRequest, context) -> vpb.ListVoicesResponse:
        return await asyncio.to_thread(self._list, caller_tenant(), request)

    async def DeleteVoice(self, request: vpb.DeleteVoiceRequest, context) -> vpb.DeleteVoiceResponse:
        deleted = await asyncio.to_thread(self._delete, caller_tenant(), request.name)
        if not deleted and not request.allow_missing:
            raise VoiceNotFound(f"there is no voice {request.name!r}")
        return vpb.DeleteVoiceResponse(deleted=deleted)

    def _create(self, tenant: str, request: vpb.CreateVoiceRequest) -> Voice:
        registry = self._tenants.of(tenant)
        segments = decode_segments(request.segments, registry.limits)
        return registry.create(request.name, segments, request.description)

    def _get(self, tenant: str, name: str) -> Voice:
        return self._tenants.of(tenant).get(name)

    def _delete(self, tenant: str, name: str) -> bool:
        return self._tenants.of(tenant).delete(name)

    def _list(self, tenant: str, request: vpb.ListVoicesRequest) -> vpb.ListVoicesResponse:
        if request.page_token and not valid_name(request.page_token):
            raise InvalidRequest([Violation("page_token", "not a next_page_token from ListVoices: "
                                                          "send it back as it came, or empty for the first page")])
        registry = self._tenants.of(tenant)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = registry.page(after=request.page_token, limit=size)
        usage = registry.usage()
        limits = registry.limits
        return vpb.ListVoicesResponse(
            voices=[voice_to_proto(v) for v in page.voices],
            next_page_token=page.next_after,
            total_voices=usage.voices,
            total_size_bytes=usage.bytes,
            max_voices=limits.max_voices,
            max_size_bytes=limits.max_bytes,
        )
