"""Converse: a conversation whose context stays on the server (csm.v1.Speech/Converse).

    with SpeechClient("localhost:50051") as client:
        conv = client.converse(voice="narrator", encoding="pcm")
        conv.add_context("What is the weather like?", speaker=1, audio=user_wav)
        turn = conv.speak("", more_text=True)          # the reply streams in from an LLM
        for piece in llm_reply:
            conv.send_text(piece)
        conv.send_text("", end_of_turn=True)
        conv.close()                                    # no more turns: the server ends the call
        for message in conv:                            # pb.ConverseResponse, in order
            if message.HasField("audio"):
                play(message.audio.data)

Turns get ids "turn-1", "turn-2", ... in the order they are sent (the server's own numbering),
unless the caller names them; every server message carries the id of its turn. A failed turn
arrives as a message with `error` (a google.rpc.Status; csm_client.errors.explain_status) and
the conversation goes on; what ends the whole call raises grpc.RpcError from the iteration.
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import AsyncIterator, Iterator

from csm_client.request import ContextTurn, build_sampling, encoding_of
from csm_wire import speech_pb2 as pb


def conversation_config(
    *,
    voice: str = "",
    speaker: int = 0,
    encoding: str = "pcm",
    sample_rate: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    max_audio_ms: int = 0,
    conversation_id: str = "",
) -> pb.ConverseRequest:
    """The opening message: the voice and what speak turns default to."""
    return pb.ConverseRequest(config=pb.ConversationConfig(
        voice=voice,
        speaker=speaker,
        sampling=build_sampling(temperature, top_k, seed),
        output=pb.OutputFormat(encoding=encoding_of(encoding), sample_rate=sample_rate),
        max_audio_ms=max_audio_ms,
        conversation_id=conversation_id,
    ))


def context_turn(turn: ContextTurn, turn_id: str = "") -> pb.ConverseRequest:
    return pb.ConverseRequest(context=pb.ContextTurn(turn_id=turn_id, segment=turn.to_proto()))


def speak_turn(
    text: str,
    *,
    turn_id: str = "",
    speaker: int | None = None,
    more_text: bool = False,
    encoding: str | None = None,
    sample_rate: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    max_audio_ms: int = 0,
) -> pb.ConverseRequest:
    """Unset values take the conversation's defaults (its config)."""
    turn = pb.SpeakTurn(turn_id=turn_id, text=text, more_text=more_text, max_audio_ms=max_audio_ms,
                        sampling=build_sampling(temperature, top_k, seed))
    if speaker is not None:
        turn.speaker = speaker
    if encoding is not None:
        turn.output.CopyFrom(pb.OutputFormat(encoding=encoding_of(encoding), sample_rate=sample_rate))
    return pb.ConverseRequest(speak=turn)


def text_input(text: str, *, flush: bool = False, end_of_turn: bool = False) -> pb.ConverseRequest:
    return pb.ConverseRequest(text=pb.TextInput(text=text, flush=flush, end_of_turn=end_of_turn))


def interrupt(heard_ms: int | None = None) -> pb.ConverseRequest:
    message = pb.Interrupt()
    if heard_ms is not None:
        message.heard_ms = heard_ms
    return pb.ConverseRequest(interrupt=message)


class _Turns:
    """Numbers turns as the server does: "turn-N", N counting context and speak turns from 1."""

    def __init__(self):
        self._count = itertools.count(1)

    def next_id(self, turn_id: str) -> str:
        number = next(self._count)
        return turn_id or f"turn-{number}"


class Conversation:
    """A blocking Converse call. Send from one thread and iterate from another, or send every
    turn first and then iterate: sending never waits for the server."""

    def __init__(self, stub, config: pb.ConverseRequest, *, timeout: float | None = None, metadata=()):
        self._outbox: queue.SimpleQueue[pb.ConverseRequest | None] = queue.SimpleQueue()
        self._outbox.put(config)
        self._turns = _Turns()
        self._call = stub.Converse(self._requests(), timeout=timeout, metadata=metadata)

    def _requests(self) -> Iterator[pb.ConverseRequest]:
        while (message := self._outbox.get()) is not None:
            yield message

    def add_context(self, text: str, speaker: int = 0, audio: bytes | None = None, *, turn_id: str = "",
                    encoding: str | None = None, sample_rate: int = 0) -> str:
        """Appends what was said (audio optional) to the context; returns the turn's id."""
        turn_id = self._turns.next_id(turn_id)
        turn = ContextTurn(text=text, speaker=speaker, audio=audio, encoding=encoding, sample_rate=sample_rate)
        self._outbox.put(context_turn(turn, turn_id))
        return turn_id

    def speak(self, text: str, *, turn_id: str = "", **options) -> str:
        """Generates a turn (keywords of speak_turn); returns its id. With more_text=True, the
        rest of its text follows through send_text."""
        turn_id = self._turns.next_id(turn_id)
        self._outbox.put(speak_turn(text, turn_id=turn_id, **options))
        return turn_id

    def send_text(self, text: str, *, flush: bool = False, end_of_turn: bool = False) -> None:
        self._outbox.put(text_input(text, flush=flush, end_of_turn=end_of_turn))

    def interrupt(self, heard_ms: int | None = None) -> None:
        self._outbox.put(interrupt(heard_ms))

    def close(self) -> None:
        """No more turns: the server finishes those sent, then ends the call."""
        self._outbox.put(None)

    def cancel(self) -> None:
        """Ends the conversation now; the server frees its slot."""
        self._call.cancel()

    def __iter__(self) -> Iterator[pb.ConverseResponse]:
        return iter(self._call)


class AsyncConversation:
    """An asyncio Converse call (AsyncSpeechClient.converse has sent its config)."""

    def __init__(self, call):
        self._call = call
        self._turns = _Turns()

    async def add_context(self, text: str, speaker: int = 0, audio: bytes | None = None, *, turn_id: str = "",
                          encoding: str | None = None, sample_rate: int = 0) -> str:
        turn_id = self._turns.next_id(turn_id)
        turn = ContextTurn(text=text, speaker=speaker, audio=audio, encoding=encoding, sample_rate=sample_rate)
        await self._call.write(context_turn(turn, turn_id))
        return turn_id

    async def speak(self, text: str, *, turn_id: str = "", **options) -> str:
        turn_id = self._turns.next_id(turn_id)
        await self._call.write(speak_turn(text, turn_id=turn_id, **options))
        return turn_id

    async def send_text(self, text: str, *, flush: bool = False, end_of_turn: bool = False) -> None:
        await self._call.write(text_input(text, flush=flush, end_of_turn=end_of_turn))

    async def interrupt(self, heard_ms: int | None = None) -> None:
        await self._call.write(interrupt(heard_ms))

    async def close(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> None:
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[pb.ConverseResponse]:
        async for message in self._call:
            yield message
