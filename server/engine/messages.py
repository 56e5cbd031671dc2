"""What crosses a thread boundary inside the engine: typed, immutable messages.

    callers ─ Submitted, Cancel, ────────►┐
      SessionOpen, SessionInterrupt,      │
      SessionClose                        │
    consumers ─ Pause, Resume ───────────►│
    prep thread ─ Prepared, PrepFailed ──►├─ control channel ─► engine thread (drained once per
    Mimi, output threads ─ StreamFailed ─►│                      loop, before it schedules)
    prep, Mimi, output ─ PipelineFailed ─►┘
    engine thread ─ PrepJob ─► prep thread
    engine thread ─ MimiStep, StreamEnd ─► Mimi thread ─ PcmFrames, StreamEnd ─► output worker

The engine thread alone changes a request (server/engine/request.py); the other threads see
only these messages. Tensors inside them are never written after they are sent.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from server.engine.types import ContextState, Event, FinishReason, SynthesisParams, Violation

if TYPE_CHECKING:
    import torch

    from csm_core.framing import Prompt
    from csm_core.sampling import SamplingParams


class EventSink(Protocol):
    """Where a request's events go: its RequestStream (server/engine/stream.py), which posts
    Cancel, Pause and Resume back to the control channel."""

    def push(self, event: Event) -> None:
        """Deliver an event (engine or output thread)."""

    @property
    def unread_ms(self) -> int:
        """Audio pushed and not yet taken by the consumer."""

    @property
    def unread_since(self) -> float | None:
        """Since when (time.monotonic) some audio has waited unread without a break; None: none waits."""

    @property
    def finished(self) -> bool:
        """A Finished event was pushed."""


class TurnKind(enum.Enum):
    VOICE = "voice"  # the voice's segments open the conversation's context
    CONTEXT = "context"  # segments appended to the context, nothing generated
    SPEAK = "speak"  # one piece of a speak turn: its text is generated after the context


@dataclass(frozen=True, slots=True)
class Turn:
    """What a conversation's request is (server/engine/sessions.py)."""

    session: int
    turn_id: str
    kind: TurnKind


# -- control channel (any thread -> engine thread) ----------------------------------------
@dataclass(frozen=True, slots=True)
class Submitted:
    """A new request (caller thread). Sent before its PrepJob, so it is known before any reply.
    A conversation's turn says which (`turn`); its params carry the segments (VOICE, CONTEXT)
    or the piece's text (SPEAK)."""

    id: int
    params: SynthesisParams
    sink: EventSink
    seed: int
    max_frames: int
    t_arrival: float
    turn: Turn | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """The caller went away (client cancelled, deadline passed)."""

    id: int


@dataclass(frozen=True, slots=True)
class Pause:
    """The consumer has too much unread audio: make no frames for it until Resume."""

    id: int


@dataclass(frozen=True, slots=True)
class Resume:
    """The consumer caught up."""

    id: int


@dataclass(frozen=True, slots=True)
class Prepared:
    """Prep thread: the request's context audio is encoded and its prompt built."""

    id: int
    prompt: Prompt
    sampling: SamplingParams
    block_hashes: tuple[bytes, ...] = ()  # of the prompt's whole chunks, when the prefix cache is on
    text_lens: tuple[int, ...] = ()  # conversation turns: text positions of each segment, in order
    lengths: tuple[int, ...] = ()  # conversation turns: all positions of each segment, in order


@dataclass(frozen=True, slots=True)
class PrepFailed:
    """Prep thread: the request is invalid once decoded (violations) or could not be prepared (error)."""

    id: int
    violations: tuple[Violation, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """Mimi or output thread: these streams' audio could not be produced."""

    ids: tuple[int, ...]
    error: str


@dataclass(frozen=True, slots=True)
class PipelineFailed:
    """Prep, Mimi or output thread: the thread stopped on an error (server/engine/threads.py), so
    the engine stops."""

    thread: str  # its name
    error: BaseException


@dataclass(frozen=True, slots=True)
class SessionOpen:
    """A conversation opens (its VOICE turn follows as a Submitted)."""

    session: int
    label: str  # the caller's conversation id, for logs


@dataclass(frozen=True, slots=True)
class SessionInterrupt:
    """Barge-in: the turn being spoken stops; the context keeps `heard_frames` of its audio
    (None: all that was generated), or none of the turn (`remove`: it failed). `sink` gets one
    Finished with the context afterwards."""

    session: int
    turn_id: str
    heard_frames: int | None
    sink: EventSink
    remove: bool = False


@dataclass(frozen=True, slots=True)
class SessionClose:
    """The conversation ended: its running turn is cancelled and its slot freed."""

    session: int


Control = (Submitted | Cancel | Pause | Resume | Prepared | PrepFailed | StreamFailed | PipelineFailed | SessionOpen
           | SessionInterrupt | SessionClose)


# -- engine thread -> prep thread ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PrepJob:
    id: int
    params: SynthesisParams
    max_frames: int
    turn: TurnKind | None = None  # a conversation's: frame its segments or its text alone


# -- engine thread -> Mimi thread -> output workers ----------------------------------------
@dataclass(frozen=True, slots=True)
class StreamRef:
    """A stream as the Mimi and output threads know it, fixed when its request gets a slot."""

    id: int
    label: str  # the caller's request_id, for logs
    row: int  # its row in Mimi's batch (and so its output worker), kept from its first slot to its end
    sample_rate: int  # output rate
    sink: EventSink


@dataclass(frozen=True, slots=True)
class MimiRow:
    stream: StreamRef
    codes: torch.Tensor  # [32] this step's frame
    first: bool  # the stream's first frame: its Mimi row is reset before it is decoded


@dataclass(frozen=True, slots=True)
class MimiStep:
    """One engine step's frames, one row per stream that made a frame (EOS frames excluded)."""

    rows: tuple[MimiRow, ...]


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The end of a stream, after its last frame: everything its Finished event reports."""

    stream: StreamRef
    reason: FinishReason
    error: str | None
    frames: int
    prompt_frames: int
    t_arrival: float
    t_admitted: float
    t_finished: float
    context: ContextState | None = None  # a conversation's piece: the context once it is kept


@dataclass(frozen=True, slots=True)
class PcmFrames:
    """Consecutive frames of one stream decoded by one Mimi call."""

    stream: StreamRef
    pcm: torch.Tensor  # float32 [frames * 1920] at 24 kHz
    frames: int


@dataclass(frozen=True, slots=True)
class Barrier:
    """Set once every message queued before it has been handled."""

    done: threading.Event


@dataclass(frozen=True, slots=True)
class Stop:
    """The thread's last message."""
