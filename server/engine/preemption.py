"""When a stream that is ahead of its reader gives its slot back, and when it takes one again.
Engine thread only.

A stream's client may read slower than the stream is made: its unread audio grows (and past
--stream-buffer-s it is paused: server/engine/stream.py). Such a stream does not need its slot
while its reader has audio to play. So when waiting requests want slots that no one frees, the
streams ahead of their readers are preempted, furthest ahead first. Ahead means either of:
- at least `ahead_s` of its audio waits unread in its RequestStream; it resumes once its reader
  is down to `ahead_s / 2`;
- some of its audio has waited unread without a break for `grace_s`: its consumer is blocked by
  the transport's flow control, so the client already holds a full window (HTTP/2's, the
  socket's: about a second of PCM, far more of Opus) that it has not read. It resumes once its
  reader has taken everything unread, with the window still to play. Without this rule a
  stream would be preempted only once `ahead_s` more had piled up behind the window, which
  takes long when the server makes audio barely faster than its readers read it.
The preempted stream's KV rows are copied to host memory (server/engine/kv_swap.py), its slot
goes back to the scheduler, and it keeps its Mimi row and output worker, so nothing it has made
is lost or reordered. Once its reader has caught up (and it is not paused) it queues again,
behind every new request, waiting or still to come (they have no audio yet; its reader has some),
and in the step that gives it a slot its rows are copied back and it makes
its next frame: the same frames, the same audio, as if it had never stopped. A conversation's
turn is preempted the same way: the rows copied out are its conversation's, and the slot it
resumes in becomes its conversation's. A fresh request is never preempted (it has nothing
unread), nor a stream whose rows do not fit the swap budget.
"""

from __future__ import annotations

import logging
import time

from server.engine.request import Request, RequestStatus
from server.engine.runner import ModelRunner
from server.engine.scheduler import Scheduler

log = logging.getLogger(__name__)


class Preemption:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, ahead_s: float, grace_s: float = 0.0):
        self._scheduler = scheduler
        self._runner = runner
        self.ahead_ms = ahead_s * 1000
        self.grace_s = grace_s  # 0: only the ahead_s rule
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
        now = time.monotonic()
        ahead = sorted((r for r in self._scheduler.running if self._preemptable(r, now)),
                       key=lambda r: (r.sink.unread_ms, now - (r.sink.unread_since or now)), reverse=True)
        for req in ahead[:wanted]:
            unread = req.sink.unread_ms
            if not self._scheduler.can_preempt() or not self._runner.swap_out(req):
                return
            self._scheduler.preempt(req)
            req.resume_below_ms = int(self.ahead_ms / 2) if unread >= self.ahead_ms else 0
            self.preemptions += 1
            log.info("request %r gave its slot to a waiting request: %.1f s of its audio unread (for %.1f s), "
                     "%d frames made", req.label, unread / 1000, now - (req.sink.unread_since or now), req.num_frames)

    def _preemptable(self, req: Request, now: float) -> bool:
        if req.status is not RequestStatus.DECODING:
            return False
        if req.sink.unread_ms >= self.ahead_ms:
            return True
        since = req.sink.unread_since
        return bool(self.grace_s) and since is not None and now - since >= self.grace_s

    def _caught_up(self, req: Request) -> bool:
        return req.paused_since is None and req.sink.unread_ms <= req.resume_below_ms
