"""A request inside the engine. Created and changed only by the engine thread; the other
threads know it through messages (server/engine/messages.py). Its seed is drawn on the
caller's thread when it is submitted (`draw_seed`), by Engine.submit and a conversation's turns
alike."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

from server.engine.messages import EventSink, StreamRef, Turn
from server.engine.types import FinishReason, SynthesisParams, Violation


def draw_seed(seed: int | None) -> int:
    """The seed a request samples with: the caller's, or a random one (63 bits: a non-negative int64)."""
    return seed if seed is not None else random.getrandbits(63)


class RequestStatus(enum.Enum):
    PREPARING = "preparing"  # on the prep thread: context audio encoded, prompt built
    WAITING = "waiting"  # prepared, no slot yet
    PREFILLING = "prefilling"  # has a slot; prompt positions still to compute
    DECODING = "decoding"  # produces one frame per step
    PREEMPTED = "preempted"  # ahead of its reader, slot given back, its KV in host memory
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    id: int  # minted by the engine
    params: SynthesisParams
    sink: EventSink
    seed: int
    max_frames: int
    t_arrival: float
    status: RequestStatus = RequestStatus.PREPARING
    prompt_len: int = 0  # absolute end of the prompt (its last position + 1), known once prepared
    slot: int | None = None
    row: int | None = None  # its stream's row in Mimi's batch, from its first slot to its end (kept when preempted)
    stream: StreamRef | None = None  # set when it gets a slot
    # Prompt positions already in the slot's KV (absolute): the prompt's start (0, or where a
    # conversation's kept rows end), then cached prefix rows copied at admission, then chunks.
    num_prefilled: int = 0
    session: int | None = None  # the conversation whose slot it runs in (server/engine/sessions.py)
    turn: Turn | None = None  # which of the conversation's turns it is
    # Chain hashes of the prompt's whole prefill chunks (server/engine/prefix_cache.py) when
    # its prompt starts at 0 and the prefix cache is on; empty: nothing to look up or keep.
    block_hashes: tuple[bytes, ...] = ()
    num_frames: int = 0  # generated frames (EOS not counted)
    paused_since: float | None = None  # its reader is behind: no frames until it catches up
    swapped: bool = False  # preempted: its KV rows wait in host memory (the runner's KVSwap) for a slot
    resume_below_ms: int = 0  # preempted: it queues again once its reader has at most this much unread
    finish_reason: FinishReason | None = None
    error: str | None = None
    violations: tuple[Violation, ...] = ()
    # Model-side state (tensors), owned by the runner; opaque to the scheduler.
    state: Any = None
    t_admitted: float | None = None
    t_first_frame: float | None = None  # its first generated frame (the end of its prefill)
    t_finished: float | None = None

    @property
    def label(self) -> str:
        return self.params.request_id

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
