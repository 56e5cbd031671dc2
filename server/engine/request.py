"""A request inside the engine: its status changes only in the engine loop."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from server.engine.stream import RequestStream
from server.engine.types import FinishReason, SynthesisParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued, no slot yet
    PREFILLING = "prefilling"  # has a slot; prompt positions still to compute
    DECODING = "decoding"  # produces one frame per step
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    id: str
    params: SynthesisParams
    stream: RequestStream
    prompt_len: int  # backbone positions of the prompt
    max_frames: int
    seed: int
    status: RequestStatus = RequestStatus.WAITING
    slot: int | None = None
    num_prefilled: int = 0  # prompt positions already in the KV cache
    num_frames: int = 0  # generated frames (EOS not counted)
    finish_reason: FinishReason | None = None
    error: str | None = None
    # Model-side state (tensors), owned by the runner; opaque to the scheduler.
    state: Any = None
    t_arrival: float = field(default_factory=time.monotonic)
    t_admitted: float | None = None
    t_first_audio: float | None = None
    t_finished: float | None = None

    @property
    def prefill_done(self) -> bool:
        return self.num_prefilled >= self.prompt_len

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
