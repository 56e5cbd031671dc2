"""A request inside the engine. Created and changed only by the engine thread; the other
threads know it through messages (server/engine/messages.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from server.engine.messages import StreamRef
from server.engine.stream import RequestStream
from server.engine.types import FinishReason, SynthesisParams, Violation


class RequestStatus(enum.Enum):
    PREPARING = "preparing"  # on the prep thread: context audio encoded, prompt built
    WAITING = "waiting"  # prepared, no slot yet
    PREFILLING = "prefilling"  # has a slot; prompt positions still to compute
    DECODING = "decoding"  # produces one frame per step
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    id: int  # minted by the engine
    params: SynthesisParams
    sink: RequestStream
    seed: int
    max_frames: int
    t_arrival: float
    status: RequestStatus = RequestStatus.PREPARING
    prompt_len: int = 0  # backbone positions of the prompt, known once prepared
    slot: int | None = None
    stream: StreamRef | None = None  # set when it gets a slot
    num_prefilled: int = 0  # prompt positions already in the KV cache
    num_frames: int = 0  # generated frames (EOS not counted)
    paused_since: float | None = None  # its reader is behind: no frames until it catches up
    finish_reason: FinishReason | None = None
    error: str | None = None
    violations: tuple[Violation, ...] = ()
    # Model-side state (tensors), owned by the runner; opaque to the scheduler.
    state: Any = None
    t_admitted: float | None = None
    t_finished: float | None = None

    @property
    def label(self) -> str:
        return self.params.request_id

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
