"""The engine as every front end sees it: submit, cancel (through the returned stream), model
info, load, and what each way a request can finish means to its caller. No transport owns this
module; gRPC Speech, Converse and the HTTP API import it, never each other. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.engine.conversation import Conversation
from server.engine.stream import RequestStream
from server.engine.types import (
    EngineInfo, EngineStats, EngineUnavailable, Finished, FinishReason, InvalidRequest, SynthesisParams,
)
from server.errors import ReaderTooSlow, SynthesisFailed


class EngineClient(Protocol):
    """What the front ends need from server.engine.engine.Engine. `submit` returns the request's
    RequestStream: its events, and `cancel()`, which frees the slot within one engine step."""

    @property
    def ready(self) -> bool: ...
    def submit(self, params: SynthesisParams) -> RequestStream: ...
    def open_conversation(self, label: str, tenant: str = "") -> Conversation: ...
    def info(self) -> EngineInfo: ...
    def stats(self) -> EngineStats: ...


# Ends that are the caller's audio, complete as asked.
COMPLETED = (FinishReason.EOS, FinishReason.LENGTH)


def failure(finished: Finished, label: str) -> Exception | None:
    """The exception a request that did not end by EOS or length stands for (None when it did),
    worded for its caller; server/errors.py maps it to a status."""
    reason = finished.reason
    if reason in COMPLETED:
        return None
    if reason is FinishReason.INVALID:
        return InvalidRequest(finished.violations)
    if reason is FinishReason.STALLED:
        return ReaderTooSlow(f"request {label!r} was stopped: {finished.error}; read the stream as it arrives")
    if reason is FinishReason.CANCELLED:  # only the server cancels a request whose caller still listens
        return EngineUnavailable(f"request {label!r} was stopped before it finished ({finished.error}): retry it")
    return SynthesisFailed(f"synthesis failed inside the server: {finished.error} (request_id {label!r})")


@dataclass(frozen=True, slots=True)
class Summary:
    """How a response ended: csm.v1's SynthesisResult, the HTTP API's usage, the metrics."""

    request_id: str
    reason: FinishReason
    frames: int  # generated, over every stream of the response
    prompt_frames: int  # of its first stream
    audio_samples: int  # handed to the encoder, at sample_rate
    sample_rate: int
    queue_s: float  # arrival -> a slot, for its first stream
    first_audio_s: float | None  # arrival -> first piece
    total_s: float
    watermarked: bool

    @property
    def audio_s(self) -> float:
        return self.audio_samples / self.sample_rate
