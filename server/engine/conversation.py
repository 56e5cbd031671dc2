"""A conversation as its caller holds it (any thread; the Converse servicer, benchmarks, tests).

    conv = engine.open_conversation("call-42", "alice")   # TooManyConversations past the limit
    conv.add_voice(voice_segments)                         # -> RequestStream: Finished(context=...)
    conv.add_context("turn-1", (ContextSegment(1, "Hi!", audio),))
    for event in conv.speak("turn-2", SynthesisParams(text="Hello. How are you?")): ...
    conv.interrupt("turn-2", heard_ms=1200)
    conv.rest(); conv.wake()                                # idle: its permit back; a turn again (TooManyConversations)
    conv.close()                                            # the slot is free within one step

Each call posts one message to the engine thread and returns the RequestStream of that turn:
a SPEAK piece streams its audio, and every turn ends with one Finished whose `context` is the
conversation's context once the turn is in it. Turns must be sent one at a time: the next once
the last one's Finished has arrived (the engine applies them in that order; see
server/engine/sessions.py). The rules of server/engine/rules.py apply to every turn on the
caller's thread, as `Engine.submit` does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from csm_core.constants import FRAME_MS
from server.engine import rules
from server.engine.admission import Admission
from server.engine.messages import Control, SessionClose, SessionInterrupt, Submitted, Turn, TurnKind
from server.engine.request import draw_seed
from server.engine.stream import RequestStream
from server.engine.types import (
    ContextSegment, EngineLimits, InvalidRequest, SynthesisParams, TooManyConversations, Violation,
)

RETRY_S_CONVERSATION = 5.0  # what a caller is told to wait when every conversation permit is taken


class Conversation:
    def __init__(self, session: int, label: str, limits: EngineLimits, post: Callable[[Control], None],
                 next_id: Callable[[], int], permits: Admission, pause_after_s: float = 0.0, tenant: str = ""):
        """`permits`: the server's conversation permits; this conversation holds one (taken by
        Engine.open_conversation) except while it rests. `tenant`: whose conversation
        (server/tenants.py; "" the default): every turn's params carry it, so its prefix-cache
        blocks are its tenant's alone."""
        self.session = session
        self.label = label
        self.tenant = tenant
        self._limits = limits
        self._post = post
        self._next_id = next_id
        self._permits = permits
        self._holds_permit = True
        self._permit_lock = threading.Lock()
        self._pause_after_s = pause_after_s  # flow control of each piece's audio (server/engine/stream.py)
        self._closed = threading.Event()

    def add_voice(self, segments: tuple[ContextSegment, ...]) -> RequestStream:
        """The voice's segments (stored codes) open the context; they are never dropped."""
        return self._turn("voice", TurnKind.VOICE, SynthesisParams(text="", context=segments))

    def add_context(self, turn_id: str, segments: tuple[ContextSegment, ...]) -> RequestStream:
        """Segments appended to the context without generating (what the user said). Raises
        InvalidRequest with fields `context[i]...`."""
        violations = rules.check_segments(segments, self._limits)
        if violations:
            raise InvalidRequest(violations)
        return self._turn(turn_id, TurnKind.CONTEXT, SynthesisParams(text="", context=segments))

    def speak(self, turn_id: str, params: SynthesisParams) -> RequestStream:
        """One piece of a speak turn: `params.text` generated after the context, its codes kept
        in it. Raises InvalidRequest (params.context must be empty: the context is the
        conversation's)."""
        violations = rules.check(params, self._limits)
        if params.context:
            violations.append(Violation("context", "a conversation's turn takes its context from the conversation"))
        if violations:
            raise InvalidRequest(violations)
        return self._turn(turn_id, TurnKind.SPEAK, params)

    def interrupt(self, turn_id: str, heard_ms: int | None) -> RequestStream:
        """Stops the turn's running piece; the context keeps the first heard_ms of the turn's
        audio (whole frames) and an end-of-audio frame (None: all that was generated)."""
        heard = None if heard_ms is None else heard_ms // FRAME_MS
        return self._cut(turn_id, heard, remove=False)

    def discard(self, turn_id: str) -> RequestStream:
        """Takes a failed turn's pieces out of the context."""
        return self._cut(turn_id, None, remove=True)

    def rest(self) -> None:
        """Idle past --conversation-idle-s: the conversation gives its permit back, so idle calls
        never lock others out; its context stays. Idempotent."""
        with self._permit_lock:
            if self._holds_permit:
                self._holds_permit = False
                self._permits.release()

    def wake(self) -> None:
        """Takes a permit again for a turn after resting. Raises TooManyConversations."""
        with self._permit_lock:
            if self._holds_permit:
                return
            if not self._permits.try_admit():
                raise TooManyConversations(f"the server holds {self._permits.capacity} active conversations, its "
                                           "limit; this one rested while idle: retry the turn shortly",
                                           RETRY_S_CONVERSATION)
            self._holds_permit = True

    def close(self) -> None:
        """Ends the conversation: its running turn is cancelled, its slot freed. Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            self._post(SessionClose(self.session))
            self.rest()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _turn(self, turn_id: str, kind: TurnKind, params: SynthesisParams) -> RequestStream:
        params = replace(params, tenant=self.tenant)
        rid = self._next_id()
        seed = draw_seed(params.seed)
        label = params.request_id or turn_id
        sink = RequestStream(rid, label, self._post, self._pause_after_s)
        max_frames = rules.max_frames(params, self._limits) if kind is TurnKind.SPEAK else 0
        self._post(Submitted(rid, params, sink, seed, max_frames, time.monotonic(), Turn(self.session, turn_id, kind)))
        return sink

    def _cut(self, turn_id: str, heard_frames: int | None, remove: bool) -> RequestStream:
        sink = RequestStream(self._next_id(), turn_id, lambda message: None)  # an acknowledgement: nothing to cancel
        self._post(SessionInterrupt(self.session, turn_id, heard_frames, sink, remove))
        return sink
