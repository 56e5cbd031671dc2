"""The front door: the one way from a transport into the engine. Torch-free.

    door = FrontDoor(engine, registry, metrics)
    voice = await door.stored_voice(tenant, name)          # or door.voices.choose(tenant, ...) off the loop
    sub = door.submit(tenant, params, voice)               # InvalidRequest, QueueFull, EngineUnavailable
    delivery = door.deliver(sub, encoder, sample_rate=..., arrival=...)
    async for piece in delivery.audio(): ...               # then delivery.result: its Summary

Every transport (server/servicer.py, server/converse/, server/http_api.py) holds the same door:
one drain switch, one voice lookup, one submission that names a voice's fields the way the
request does, one delivery. Every lookup, submission and conversation is a tenant's
(server/tenants.py, from the caller's token): it finds that tenant's voices only, and the
engine keeps its prompts' prefix-cache blocks apart from every other tenant's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from server.audio_encoding import Encoder
from server.engine.conversation import Conversation
from server.engine.stream import RequestStream
from server.engine.types import EngineUnavailable, InvalidRequest, SynthesisParams
from server.front.delivery import AudioDelivery
from server.front.engine_client import EngineClient
from server.front.voices import VoiceLookup
from server.metrics import Metrics
from server.voices.registry import VoiceRegistry
from server.voices.synthesis import blame_request_fields, with_voice
from server.voices.types import Voice


@dataclass(frozen=True, slots=True)
class Submission:
    stream: RequestStream
    label: str  # the caller's request_id
    voice: Voice | None  # the stored voice whose segments open its context

    def blame(self, exc: InvalidRequest) -> InvalidRequest:
        """The engine's violations named as the request names its fields (`voice`, `context[i]`)."""
        return exc if self.voice is None else blame_request_fields(exc, self.voice)


class FrontDoor:
    def __init__(self, engine: EngineClient, registry: VoiceRegistry | None, metrics: Metrics):
        """`registry`: the stored voices requests may name (None: this server stores none)."""
        self.engine = engine
        self.metrics = metrics
        self.limits = engine.info().limits
        self.voices = VoiceLookup(registry, self.limits.max_speaker_id)
        self.draining = asyncio.Event()  # set once: new work is refused, conversations end between turns

    def stop_accepting(self) -> None:
        """New requests and conversations get EngineUnavailable from now on (the server is draining)."""
        self.draining.set()

    @property
    def accepting(self) -> bool:
        return not self.draining.is_set()

    def check_open(self, what: str = "send the request") -> None:
        if self.draining.is_set():
            raise EngineUnavailable(f"the server is shutting down: {what} to another replica")

    async def stored_voice(self, tenant: str, name: str) -> Voice | None:
        """The tenant's stored voice `name` names (None for ""): VoiceNotFound, VoiceUnusable."""
        return await asyncio.to_thread(self.voices.stored, tenant, name) if name else None

    def submit(self, tenant: str, params: SynthesisParams, voice: Voice | None = None) -> Submission:
        """The tenant's request, with the voice's segments first in its context, into the engine's
        queue. Raises InvalidRequest (named as the request names its fields), QueueFull,
        EngineUnavailable."""
        self.check_open()
        params = replace(params, tenant=tenant)
        try:
            stream = self.engine.submit(with_voice(params, voice) if voice is not None else params)
        except InvalidRequest as exc:
            raise (exc if voice is None else blame_request_fields(exc, voice)) from None
        return Submission(stream, params.request_id, voice)

    def open_conversation(self, tenant: str, label: str) -> Conversation:
        """The tenant's conversation (each of its turns carries the tenant). TooManyConversations,
        EngineUnavailable."""
        self.check_open("open the conversation")
        return self.engine.open_conversation(label, tenant)

    def deliver(self, sub: Submission, encoder: Encoder, *, sample_rate: int, arrival: float) -> AudioDelivery:
        return AudioDelivery(encoder, self.metrics, request_id=sub.label, sample_rate=sample_rate, arrival=arrival,
                             stream=sub.stream, blame=sub.blame)
