"""When a stream that is ahead of its reader gives its slot back, and when it takes one again.
Engine thread only.

A stream's client may read slower than the stream is made: its unread audio grows (and past
--stream-buffer-s it is paused: server/engine/stream.py). Such a stream does not need its slot
while its reader has audio to play. So when waiting requests want slots that no one frees, the
streams furthest ahead of their readers, at least `ahead_s` of unread audio each, are preempted:
their KV rows are copied to host memory (server/engine/kv_swap.py), their slots go back to the
scheduler, and each keeps its Mimi row and output worker, so nothing it has made is lost or
reordered. Once its reader is down to `ahead_s / 2` unread (and it is not paused) it queues again,
behind every new request, waiting or still to come (they have no audio yet; its reader has some),
and in the step that gives it a slot its rows are copied back and it makes
its next frame: the same frames, the same audio, as if it had never stopped. A conversation's
turn is preempted the same way: the rows copied out are its conversation's, and the slot it
resumes in becomes its conversation's. A fresh request is never preempted (it has nothing
unread), nor a stream whose rows do not fit the swap budget.
"""

from __future__ import annotations

import logging

from server.engine.request import Request, RequestStatus
from server.engine.runner import ModelRunner
from server.engine.scheduler import Scheduler

log = logging.getLogger(__name__)


class Preemption:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, ahead_s: float):
        self._scheduler = scheduler
        self._runner = runner
        self.ahead_ms = ahead_s * 1000
        self.enabled = scheduler.max_preempted > 0 and runner.swap is not None
        self.preemptions = 0  # since start
        self.resumes = 0

    def step(self) -> None:
        """Before each schedule: preempted streams whose readers caught up queue again; then the
        streams furthest ahead give their slots to the waiting requests no free slot takes."""
        if not self.enabled:
            return
        for req in [r for r in self._scheduler.preempted if self._caught_up(r)]:
            self._scheduler.resume(req)
            self.resumes += 1
        wanted = self._scheduler.slots_wanted()
        if not wanted:
            return
        ahead = sorted((r for r in self._scheduler.running if self._preemptable(r)),
                       key=lambda r: r.sink.unread_ms, reverse=True)
        for req in ahead[:wanted]:
            unread = req.sink.unread_ms
            if not self._scheduler.can_preempt() or not self._runner.swap_out(req):
                return
            self._scheduler.preempt(req)
            self.preemptions += 1
            log.info("request %r gave its slot to a waiting request: %.1f s of its audio unread, %d frames made",
                     req.label, unread / 1000, req.num_frames)

    def _preemptable(self, req: Request) -> bool:
        return req.status is RequestStatus.DECODING and req.sink.unread_ms >= self.ahead_ms

    def _caught_up(self, req: Request) -> bool:
        return req.paused_since is None and req.sink.unread_ms <= self.ahead_ms / 2
