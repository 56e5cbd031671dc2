"""The engine thread's books: every request not finished, the one place a request ends, and the
EngineStats snapshot published after every loop.

`finish` is where a request stops being counted, whatever ends it (EOS, length, a cancel, an
error, a stalled reader, the shutdown): its slot goes back to the scheduler, its place to the
admission count (a conversation's piece gives its frames to the context instead), and its
Finished event follows its last frames through Mimi and its output worker or, when it never had
a slot or once a pipeline thread has stopped (`break_pipeline`), goes to its stream at once.
Engine thread only, but for `refuse`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from server.engine.admission import Admission
from server.engine.messages import Control, SessionInterrupt, StreamEnd, Submitted
from server.engine.mimi_decode import MimiDecoder
from server.engine.preemption import Preemption
from server.engine.request import Request, RequestStatus
from server.engine.scheduler import Scheduler
from server.engine.sessions import Sessions
from server.engine.types import ContextState, EngineStats, Finished, FinishReason, RequestTimes, Violation

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
        self._ending: list[StreamEnd] = []  # ends handed to Mimi, their Finished maybe not pushed yet
        self._broken = False  # a pipeline thread stopped: ends go straight to their streams
        self.observers: list[Callable[[RequestTimes], None]] = []  # told of every request's end

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
        self._observe(req)
        if error:
            log.warning("request %r ended (%s): %s", req.label, reason.value, error)
        if req.stream is not None and not self._broken:  # its end follows its frames through Mimi and output
            end = StreamEnd(req.stream, reason, error, req.num_frames, req.prompt_len, req.t_arrival,
                            req.t_admitted, req.t_finished, context)
            self._ending = [e for e in self._ending if not e.stream.sink.finished]
            self._ending.append(end)
            self._mimi.end(end)
            return
        req.sink.push(Finished(
            reason=reason, frames=req.num_frames, prompt_frames=req.prompt_len,
            queue_s=(req.t_admitted or req.t_finished) - req.t_arrival, ttfa_s=None,
            total_s=req.t_finished - req.t_arrival, watermarked=self._watermarked, error=error,
            violations=violations, context=context))

    def _observe(self, req: Request) -> None:
        if not self.observers:
            return
        first, admitted, ended = req.t_first_frame, req.t_admitted, req.t_finished
        times = RequestTimes(
            reason=req.finish_reason, max_frames=req.max_frames, frames=req.num_frames,
            queue_s=None if admitted is None else admitted - req.t_arrival,
            prefill_s=None if first is None or admitted is None else first - admitted,
            decode_s=None if first is None else ended - first)
        for fn in self.observers:
            try:
                fn(times)
            except Exception:  # an observer's fault never ends the engine
                log.exception("request observer failed")

    def finish_all(self, reason: FinishReason, error: str) -> None:
        """Every request not finished yet (the engine stops)."""
        for req in list(self._requests.values()):
            self.finish(req, reason, error)

    def break_pipeline(self, error: str) -> None:
        """A pipeline thread stopped, so what was handed to Mimi may never reach its stream: each
        stream whose end is on its way and not delivered ends now with ERROR, and from here on
        every request's end goes straight to its stream."""
        self._broken = True
        for end in self._ending:
            if not end.stream.sink.finished:
                end.stream.sink.push(Finished(
                    reason=FinishReason.ERROR, frames=end.frames, prompt_frames=end.prompt_frames,
                    queue_s=end.t_admitted - end.t_arrival, ttfa_s=None, total_s=end.t_finished - end.t_arrival,
                    watermarked=self._watermarked, error=error))
        self._ending.clear()

    def refuse(self, msg: Control, error: str) -> None:
        """A message that reached the stopped engine: a request or an interrupt ends with ERROR at
        once, on the posting thread (server/engine/control.py); anything else is dropped."""
        if isinstance(msg, Submitted) and msg.turn is None:
            self._admission.release()
        if isinstance(msg, (Submitted, SessionInterrupt)):
            msg.sink.push(Finished(reason=FinishReason.ERROR, frames=0, prompt_frames=0, queue_s=0.0, ttfa_s=None,
                                   total_s=0.0, watermarked=self._watermarked, error=error))

    def stats(self) -> EngineStats:
        running = self._scheduler.running
        prefilling = sum(r.status is RequestStatus.PREFILLING for r in running)
        one_shot = sum(r.session is None for r in running)
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
