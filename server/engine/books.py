"""The engine thread's books: every request not finished, the one place a request ends, and the
EngineStats snapshot published after every loop.

`finish` is where a request stops being counted, whatever ends it (EOS, length, a cancel, an
error, a stalled reader, the shutdown): its slot goes back to the scheduler, its place to the
admission count (a conversation's piece gives its frames to the context instead), and its
Finished event follows its last frames through Mimi and its output worker or, when it never had
a slot, goes to its stream at once. Engine thread only.
"""

from __future__ import annotations

import logging
import time

from server.engine.admission import Admission
from server.engine.messages import StreamEnd
from collections.abc import Callable

from server.engine.mimi_decode import MimiDecoder
from server.engine.preemption import Preemption
from server.engine.request import Request, RequestStatus
from server.engine.scheduler import Scheduler
from server.engine.sessions import Sessions
from server.engine.types import ContextState, EngineStats, Finished, FinishReason, Violation

log = logging.getLogger(__name__)


class RequestBooks:
    def __init__(self, scheduler: Scheduler, sessions: Sessions, admission: Admission, mimi: MimiDecoder,
                 watermarked: bool, drop_swapped: Callable[[Request], None], preemption: Preemption):
        self._scheduler = scheduler
        self._sessions = sessions
        self._admission = admission  # one-shot requests; conversations are bounded by their own count
        self._mimi = mimi
        self._watermarked = watermarked
        self._drop_swapped = drop_swapped  # frees the host copy of a preempted request's rows
        self._preemption = preemption
        self._requests: dict[int, Request] = {}  # every request not finished, by id

    def open(self, req: Request) -> None:
        self._requests[req.id] = req

    def get(self, request_id: int) -> Request | None:
        """The request, or None once it has finished."""
        return self._requests.get(request_id)

    def finish(self, req: Request, reason: FinishReason, error: str | None = None,
               violations: tuple[Violation, ...] = ()) -> None:
        if req.finished:
            return
        self._scheduler.finish(req)
        req.finish_reason, req.error, req.violations = reason, error, violations
        req.t_finished = time.monotonic()
        context: ContextState | None = None
        if req.turn is not None:
            context = self._sessions.finished(req, reason, req.t_finished)
        else:
            self._admission.release()
        self._drop_swapped(req)
        req.state = None
        del self._requests[req.id]
        if error:
            log.warning("request %r ended (%s): %s", req.label, reason.value, error)
        if req.stream is not None:  # it had a slot: its end follows its frames through Mimi and output
            self._mimi.end(StreamEnd(req.stream, reason, error, req.num_frames, req.prompt_len, req.t_arrival,
                                     req.t_admitted, req.t_finished, context))
            return
        req.sink.push(Finished(
            reason=reason, frames=0, prompt_frames=req.prompt_len, queue_s=req.t_finished - req.t_arrival,
            ttfa_s=None, total_s=req.t_finished - req.t_arrival, watermarked=self._watermarked, error=error,
            violations=violations, context=context))

    def finish_all(self, reason: FinishReason, error: str) -> None:
        """Every request not finished yet (the engine stops)."""
        for req in list(self._requests.values()):
            self.finish(req, reason, error)

    def stats(self) -> EngineStats:
        running = self._scheduler.running
        prefilling = sum(r.status is RequestStatus.PREFILLING for r in running)
        one_shot = sum(r.turn is None for r in running)
        # Admitted one-shot requests with no slot, beyond what free (or idle conversations') slots take.
        unslotted = self._admission.count - one_shot - len(self._scheduler.preempted)
        takeable = self._scheduler.slots.num_free + self._scheduler.num_idle_held()
        prefix = self._scheduler.prefix
        return EngineStats(
            slots_in_use=self._scheduler.slots.num_used, max_slots=self._scheduler.slots.num_slots,
            requests_waiting=max(0, unslotted - takeable),
            requests_prefilling=prefilling, requests_decoding=len(running) - prefilling,
            requests_paused=sum(r.paused_since is not None for r in running),
            requests_preempted=len(self._scheduler.preempted), preemptions=self._preemption.preemptions,
            resumes=self._preemption.resumes,
            conversations=len(self._sessions), conversations_holding_slots=self._sessions.holding_slots,
            prefix_cache=prefix.stats() if prefix is not None else None,
        )
