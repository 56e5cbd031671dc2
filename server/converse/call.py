"""One csm.v1.Speech/Converse call: the client's messages in, the server's out, the turns run in
order on one engine Conversation (server/engine/conversation.py). Torch-free.

    reader      reads the client's messages as they arrive: queues context and speak turns
                (numbered turn-N), routes `text` to the open speak turn (cut into pieces at
                sentence ends, server/converse/sentences.py), acts on `interrupt` at once
    turn loop   runs the queued turns one at a time, as the engine applies them: a context
                turn, or a speak turn piece by piece as its text completes (one audio stream
                per turn, one result, one context update)
    run()       yields what the turn loop puts in the outbox; what ends the whole conversation
                is raised and mapped to a status by server/errors.py

A speak turn's audio leaves through the front door's delivery (server/front/delivery.py), as a
Synthesize stream's does. The outbox holds a few messages: a client that stops reading stops
the turn loop, so its stream's unread audio grows and the engine pauses it, the same bound as
Synthesize; at most MAX_QUEUED_TURNS turns wait, after which the next message is read once one
has started (gRPC's flow control then holds the client's sends).

The conversation ends with its call: the client half-closing (after every turn it sent), the
client going away (at once: the engine frees the slot within one step), its lifetime passing,
the server draining (between turns), or an error of the whole call. A turn that is wrong
gets its own error (ConverseResponse.error) and the conversation goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from csm_wire import speech_pb2 as pb
from server.audio_encoding import make_encoder
from server.auth import caller_tenant
from server.chunks import Chunker
from server.converse import turns
from server.converse.sentences import SentenceSplitter
from server.engine.stream import RequestStream
from server.engine.types import (
    ContextSegment, EngineUnavailable, Finished, FinishReason, InvalidRequest, OutputEncoding, SynthesisParams,
    TooManyConversations, Violation,
)
from server.errors import ConversationExpired, SynthesisFailed, status_proto
from server.front.delivery import AudioDelivery
from server.front.door import FrontDoor
from server.front.engine_client import Summary, failure
from server.proto_convert import synthesis_result
from server.voices.synthesis import voice_context

log = logging.getLogger(__name__)

_END = object()  # the outbox's last item: the call ends with OK
_SEED_SPACE = 2**64
MAX_QUEUED_TURNS = 8  # turns sent and not started; past it the next message waits to be read
OUTBOX_MESSAGES = 4  # responses made and not yet taken by the transport


@dataclass(eq=False)
class _ContextTurn:
    turn_id: str
    segment: ContextSegment | None
    error: Exception | None = None


@dataclass(eq=False)
class _SpeakTurn:
    turn_id: str
    params: SynthesisParams  # its settings (text: set per piece)
    arrival: float
    pieces: asyncio.Queue = field(default_factory=asyncio.Queue)  # complete pieces, then None
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    chars: int = 0
    text_open: bool = False  # more text may arrive
    error: Exception | None = None  # the turn fails with it (its remaining text is absorbed)
    cancelled: bool = False  # dropped by an interrupt before it started
    interrupt: RequestStream | None = None  # set when interrupted while running

    def add_text(self, text: str, flush: bool, end: bool, limits) -> None:
        if end:
            self.text_open = False
        if self.error is not None or self.stopped:
            return  # absorbed: the turn is over
        self.chars += len(text)
        violation = turns.check_text(self.chars, limits)
        if violation is not None:
            self.error = InvalidRequest([violation])
            self.pieces.put_nowait(None)
            return
        for piece in self.splitter.feed(text):
            self.pieces.put_nowait(piece)
        if flush or end:
            rest = self.splitter.flush()
            if rest is not None:
                self.pieces.put_nowait(rest)
        if end:
            self.pieces.put_nowait(None)

    def close_text(self) -> None:
        """No more text will come: what arrived of an unfinished sentence is the turn's last piece."""
        if self.text_open:
            self.text_open = False
            rest = self.splitter.flush() if self.error is None and not self.stopped else None
            if rest is not None:
                self.pieces.put_nowait(rest)
            self.pieces.put_nowait(None)

    @property
    def stopped(self) -> bool:
        return self.cancelled or self.interrupt is not None


class ConverseCall:
    def __init__(self, door: FrontDoor):
        self._door = door
        self._limits = door.limits
        self._conv = None  # the engine's Conversation, once opened
        self._outbox: asyncio.Queue = asyncio.Queue(OUTBOX_MESSAGES)  # responses in order, then _END
        self._abort: asyncio.Future | None = None  # an exception that ends the whole call
        self._turns: deque[_ContextTurn | _SpeakTurn] = deque()
        self._turn_added = asyncio.Event()
        self._turn_started = asyncio.Event()
        self._open: deque[_SpeakTurn] = deque()  # speak turns whose text is still arriving, in order
        self._active: _SpeakTurn | None = None
        self._ids: set[str] = set()
        self._count = 0
        self._half_closed = False

    # -- the call ----------------------------------------------------------------------
    async def run(self, requests: AsyncIterator[pb.ConverseRequest], context) -> AsyncIterator[pb.ConverseResponse]:
        self._door.check_open("open the conversation")
        requests = aiter(requests)
        config = await self._config(requests)
        self._defaults = turns.defaults(config)
        tenant = caller_tenant()
        voice = await self._door.stored_voice(tenant, config.voice)
        label = config.conversation_id or uuid.uuid4().hex
        self._conv = conv = self._door.open_conversation(tenant, label)
        context.add_done_callback(lambda _context: conv.close())  # the client went away: free the slot now
        self._abort = asyncio.get_running_loop().create_future()
        tasks: list[asyncio.Task] = []
        lifetime = self._limits.conversation_max_lifetime_s
        timer = None
        try:
            positions = 0
            if voice is not None:
                fin = await _finished(conv.add_voice(voice_context(voice)))
                if fin.reason is not FinishReason.EOS:
                    raise InvalidRequest([Violation("config.voice", f"voice {voice.name!r} could not open the "
                                                                    f"conversation: {_why(fin)}")])
                positions = fin.context.positions
            yield pb.ConverseResponse(started=pb.ConversationStarted(
                conversation_id=label, context_frames=positions, max_seq_len=self._limits.max_seq_len,
                max_lifetime_s=int(lifetime)))
            tasks = [asyncio.create_task(self._guard(self._read(requests))),
                     asyncio.create_task(self._guard(self._run_turns()))]
            if lifetime > 0:
                timer = asyncio.get_running_loop().call_later(lifetime, self._fail, ConversationExpired(
                    f"conversation {label!r} reached the server's lifetime limit of {lifetime:g} s: open a new one"))
            while True:
                item = await self._next()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if timer is not None:
                timer.cancel()
            for task in tasks:
                task.cancel()
            conv.close()

    async def _next(self):
        """The next response, or what ends the call once every response made before it has left."""
        if not self._outbox.empty():
            return self._outbox.get_nowait()
        if self._abort.done():
            return self._abort.result()
        get = asyncio.ensure_future(self._outbox.get())
        try:
            await asyncio.wait({get, self._abort}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        return self._abort.result()

    def _fail(self, exc: BaseException) -> None:
        if not self._abort.done():
            self._abort.set_result(exc)

    async def _config(self, requests: AsyncIterator[pb.ConverseRequest]) -> pb.ConversationConfig:
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "config":
            raise InvalidRequest([Violation("config", "the first message of a conversation must be `config`")])
        violations = turns.check_config(first.config, self._limits)
        if violations:
            raise InvalidRequest(violations)
        return first.config

    async def _guard(self, work) -> None:
        """A task's unexpected failure ends the call (INTERNAL, logged by the interceptor)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    async def _emit(self, turn_id: str, **kind) -> None:
        """Waits while the outbox is full: the client is not reading."""
        await self._outbox.put(pb.ConverseResponse(turn_id=turn_id, **kind))

    async def _error(self, turn_id: str, exc: Exception) -> None:
        await self._emit(turn_id, error=status_proto(exc))

    # -- reader ------------------------------------------------------------------------
    async def _read(self, requests: AsyncIterator[pb.ConverseRequest]) -> None:
        async for msg in requests:
            kind = msg.WhichOneof("kind")
            if kind == "context":
                await self._queue(self._context_turn(msg.context))
            elif kind == "speak":
                await self._queue(self._speak_turn(msg.speak))
            elif kind == "text":
                self._text(msg.text)
            elif kind == "interrupt":
                self._interrupt(msg.interrupt.heard_ms if msg.interrupt.HasField("heard_ms") else None)
            else:
                what = "a second `config`" if kind == "config" else "a message with no turn in it"
                raise InvalidRequest([Violation(kind or "kind", f"{what}: after `config` send context, speak, text "
                                                                "or interrupt")])
        self._half_closed = True
        for turn in self._open:  # the client is done: what arrived of an open turn is its last piece
            turn.close_text()
        self._open.clear()
        self._turn_added.set()

    def _turn_id(self, given: str) -> tuple[str, Exception | None]:
        self._count += 1
        turn_id = given or f"turn-{self._count}"
        if turn_id in self._ids:
            return turn_id, InvalidRequest([Violation("turn_id", f"{turn_id!r} is used by an earlier turn of "
                                                                 "this conversation")])
        self._ids.add(turn_id)
        return turn_id, None

    def _context_turn(self, msg: pb.ContextTurn) -> _ContextTurn:
        turn_id, error = self._turn_id(msg.turn_id)
        if error is None and not msg.HasField("segment"):
            error = InvalidRequest([Violation("segment", "a context turn needs a segment (speaker, text, audio)")])
        return _ContextTurn(turn_id, turns.context_segment(msg) if error is None else None, error)

    def _speak_turn(self, msg: pb.SpeakTurn) -> _SpeakTurn:
        turn_id, error = self._turn_id(msg.turn_id)
        params = turns.speak_params(msg, self._defaults, request_id=turn_id)
        turn = _SpeakTurn(turn_id, params, time.monotonic(), text_open=msg.more_text)
        violations = turns.check_speak(params, msg.more_text, self._limits)
        turn.error = error or (InvalidRequest(violations) if violations else None)
        if msg.more_text:
            self._open.append(turn)  # its text arrives in `text` messages, even if it failed already
            turn.add_text(msg.text, flush=False, end=False, limits=self._limits)
        elif turn.error is None:
            turn.pieces.put_nowait(msg.text.strip())
            turn.pieces.put_nowait(None)
        return turn

    async def _queue(self, turn: _ContextTurn | _SpeakTurn) -> None:
        self._turns.append(turn)
        self._turn_added.set()
        while len(self._turns) > MAX_QUEUED_TURNS:  # read on once one has started
            self._turn_started.clear()
            await self._turn_started.wait()

    def _text(self, msg: pb.TextInput) -> None:
        if not self._open:
            raise InvalidRequest([Violation("text", "no speak turn is open: send a speak turn with more_text before "
                                                    "its text")])
        turn = self._open[0]
        turn.add_text(msg.text, msg.flush, msg.end_of_turn, self._limits)
        if msg.end_of_turn:
            self._open.popleft()

    def _interrupt(self, heard_ms: int | None) -> None:
        """Stops the turn being spoken and drops the speak turns sent before that have not started."""
        for turn in self._turns:
            if isinstance(turn, _SpeakTurn):
                turn.cancelled = True
                turn.close_text()
        active = self._active
        if active is not None and active.interrupt is None:
            active.interrupt = self._conv.interrupt(active.turn_id, heard_ms)
            active.close_text()
        self._open = deque(t for t in self._open if t.text_open)

    # -- turn loop ---------------------------------------------------------------------
    async def _run_turns(self) -> None:
        while True:
            if not self._turns:
                if self._half_closed:
                    await self._outbox.put(_END)
                    return
                if self._door.draining.is_set():
                    self._fail(EngineUnavailable("the server is draining: continue on another replica (a new "
                                                 "conversation, with the context you keep)"))
                    return
                await self._next_turn()
                continue
            turn = self._turns.popleft()
            self._turn_started.set()
            try:
                self._conv.wake()  # a permit again, if it rested
            except TooManyConversations as exc:
                await self._error(turn.turn_id, exc)
                continue
            if isinstance(turn, _ContextTurn):
                await self._run_context(turn)
            else:
                await self._run_speak(turn)

    async def _next_turn(self) -> None:
        """Waits for a turn (or the drain); idle past --conversation-idle-s, the conversation rests:
        its permit goes back, so idle calls never lock other conversations out."""
        self._turn_added.clear()
        added = asyncio.ensure_future(self._turn_added.wait())
        draining = asyncio.ensure_future(self._door.draining.wait())
        idle_s = self._limits.conversation_idle_s or None
        try:
            done, _ = await asyncio.wait({added, draining}, timeout=idle_s, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                self._conv.rest()
                await asyncio.wait({added, draining}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            added.cancel()
            draining.cancel()

    async def _run_context(self, turn: _ContextTurn) -> None:
        if turn.error is not None:
            await self._error(turn.turn_id, turn.error)
            return
        try:
            stream = self._conv.add_context(turn.turn_id, (turn.segment,))
        except InvalidRequest as exc:
            await self._error(turn.turn_id, InvalidRequest(turns.segment_fields(exc.violations)))
            return
        fin = await _finished(stream)
        if fin.reason is FinishReason.INVALID:
            await self._error(turn.turn_id, InvalidRequest(turns.segment_fields(fin.violations)))
        elif fin.reason is not FinishReason.EOS:
            await self._error(turn.turn_id, SynthesisFailed(f"the context turn failed inside the server: {_why(fin)}"))
        else:
            await self._emit(turn.turn_id, context=_update(fin.context, fin.context.dropped))

    async def _run_speak(self, turn: _SpeakTurn) -> None:
        if turn.error is not None:  # a wrong turn reports its error, interrupted or not
            await self._error(turn.turn_id, turn.error)
            return
        if turn.cancelled:
            self._door.metrics.observe_finished(FinishReason.CANCELLED)
            await self._emit(turn.turn_id, result=synthesis_result(_not_started(turn)))
            return
        self._active = turn
        try:
            await self._speak(turn)
        finally:
            self._active = None

    async def _speak(self, turn: _SpeakTurn) -> None:
        rate = turn.params.output_sample_rate
        encoder = make_encoder(OutputEncoding(turn.params.output_encoding), rate)
        delivery = AudioDelivery(encoder, self._door.metrics, request_id=turn.turn_id, sample_rate=rate,
                                 arrival=turn.arrival)
        chunks = Chunker(rate)  # one numbering over the turn's pieces
        reason, pieces, dropped, context = FinishReason.EOS, 0, [], None
        while not turn.stopped and turn.error is None:
            text = await turn.pieces.get()
            if text is None or turn.stopped or turn.error is not None:
                break
            seed = turn.params.seed
            params = replace(turn.params, text=text, seed=None if seed is None else (seed + pieces) % _SEED_SPACE)
            try:
                stream = self._conv.speak(turn.turn_id, params)
            except InvalidRequest as exc:
                turn.error = exc
                break
            async for piece in delivery.pieces(stream):
                if turn.interrupt is None:  # audio after an interrupt is not sent
                    await self._emit(turn.turn_id, audio=chunks.add(piece.data, piece.samples))
            fin = delivery.finished
            pieces += 1
            if fin.context is not None:
                context = fin.context
                dropped += fin.context.dropped
            if fin.reason is FinishReason.LENGTH:
                reason = FinishReason.LENGTH
            elif turn.interrupt is None:
                turn.error = failure(fin, turn.turn_id)
        if turn.error is None and turn.interrupt is None and pieces == 0:
            turn.error = InvalidRequest([Violation("text", "must not be empty")])
        if turn.error is not None:
            turn.close_text()
            if pieces:
                delivery.record(delivery.finished.reason)
                await _finished(self._conv.discard(turn.turn_id))  # the context as it was before the turn
            await self._error(turn.turn_id, turn.error)
            return
        if turn.interrupt is not None:
            reason = FinishReason.CANCELLED
            context = (await _finished(turn.interrupt)).context
        else:
            tail = await delivery.tail()
            if tail is not None:
                await self._emit(turn.turn_id, audio=chunks.add(tail.data, tail.samples))
        summary = replace(delivery.record(reason), audio_samples=chunks.total_samples)  # what was sent
        await self._emit(turn.turn_id, result=synthesis_result(summary))
        if context is not None:
            await self._emit(turn.turn_id, context=_update(context, tuple(dropped)))


def _not_started(turn: _SpeakTurn) -> Summary:
    """The result of a speak turn an interrupt dropped before it started."""
    return Summary(request_id=turn.turn_id, reason=FinishReason.CANCELLED, frames=0, prompt_frames=0, audio_samples=0,
                   sample_rate=turn.params.output_sample_rate, queue_s=0.0, first_audio_s=None,
                   total_s=time.monotonic() - turn.arrival, watermarked=False)


async def _finished(stream: RequestStream) -> Finished:
    async for event in stream:
        if isinstance(event, Finished):
            return event
    raise RuntimeError("a stream ended without its Finished event")


def _update(context, dropped: tuple[str, ...]) -> pb.ContextUpdate:
    return pb.ContextUpdate(context_frames=context.positions, turns=context.turns, dropped_turn_ids=list(dropped))


def _why(fin: Finished) -> str:
    if fin.violations:
        return "; ".join(f"{v.field}: {v.description}" for v in fin.violations)
    return fin.error or fin.reason.value
