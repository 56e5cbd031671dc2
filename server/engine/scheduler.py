"""Admission and per-step planning. Torch-free.

The rule: each step, every decoding request produces one frame (unless its reader asked for a
pause), and the prefill budget is spent on prompt chunks of requests that have a slot, oldest
first. A request whose last prompt chunk is computed this step produces its first frame in the
same step. Long prompts are thus prefilled over several steps while the others keep decoding. The budget bounds how
much a step can delay the decoding streams' next frames; a step with no stream decoding
delays nobody, so it gets the larger idle budget (a burst into an idle server is admitted in
one step).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from server.engine.request import Request, RequestStatus


class SlotPool:
    def __init__(self, num_slots: int):
        self._free = list(range(num_slots - 1, -1, -1))  # pop() hands out the lowest slot first
        self.num_slots = num_slots

    def can_allocate(self) -> bool:
        return bool(self._free)

    def allocate(self) -> int:
        return self._free.pop()

    def free(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is not allocated")
        self._free.append(slot)
        self._free.sort(reverse=True)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)


@dataclass(slots=True, frozen=True)
class PrefillChunk:
    request: Request
    start: int
    end: int

    @property
    def completes_prompt(self) -> bool:
        return self.end >= self.request.prompt_len


@dataclass(slots=True)
class SchedulerOutput:
    admitted: list[Request] = field(default_factory=list)  # got a slot this step
    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)  # feed back their last frame, make a new one

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.end - c.start for c in self.prefill)


class Scheduler:
    def __init__(self, num_slots: int, prefill_chunk: int, prefill_budget: int,
                 idle_prefill_budget: int | None = None):
        self.slots = SlotPool(num_slots)
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        self.idle_prefill_budget = max(prefill_budget, idle_prefill_budget or 0)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order

    def add(self, request: Request) -> None:
        """A prepared request (its prompt length is known) queues for a slot."""
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        while self.waiting and self.slots.can_allocate():
            req = self.waiting.popleft()
            req.slot = self.slots.allocate()
            req.status = RequestStatus.PREFILLING
            self.running.append(req)
            out.admitted.append(req)
        decoding = any(req.status is RequestStatus.DECODING for req in self.running)
        budget = self.prefill_budget if decoding else self.idle_prefill_budget
        for req in self.running:
            if req.status is RequestStatus.DECODING:
                if req.paused_since is None:
                    out.decode.append(req)
                continue
            start = req.num_prefilled
            while budget > 0 and start < req.prompt_len:
                # chunks are aligned to multiples of prefill_chunk, whatever the budget
                end = min((start // self.prefill_chunk + 1) * self.prefill_chunk, req.prompt_len)
                if end - start > budget:
                    break
                out.prefill.append(PrefillChunk(req, start, end))
                budget -= end - start
                start = end
            if start < req.prompt_len:
                budget = 0  # keep FIFO: no younger request overtakes an unfinished older prompt
        return out

    def has_work(self) -> bool:
        """Whether a step would do anything: admit, prefill, or make a frame (a paused request makes none)."""
        if self.waiting and self.slots.can_allocate():
            return True
        return any(r.status is not RequestStatus.DECODING or r.paused_since is None for r in self.running)

    def finish(self, req: Request) -> None:
        """Release a request's slot (it must have one) or take it off the waiting queue."""
        if req in self.running:
            self.running.remove(req)
            self.slots.free(req.slot)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)
