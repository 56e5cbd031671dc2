"""Admission and per-step planning. Torch-free.

The rule: a request's computed positions catch up with its prompt, then it makes one frame per
step.

- Slots. A slot has one holder: a one-shot request while it runs, or a conversation (session)
  from its first admitted turn until it is closed, idles out or its slot is reclaimed. A turn of
  a session that holds a slot runs in that slot and never waits for one. Other requests take
  slots first come, first served: a free slot, else the slot of the session that has been idle
  the longest (holding a slot, no turn in the engine); that session's next turn queues for a
  slot and prefills its context again.
- Computed positions. A request's prompt starts where its slot's KV ends: 0, or after the rows
  a session keeps. At admission, a prompt that starts at 0 copies the longest cached prefix
  (whole prefill chunks of the prefix cache, server/engine/prefix_cache.py; never the last
  prompt position, whose hidden state makes the first frame). Neither costs prefill budget.
- Budget. Each step every decoding request makes one frame (unless its reader asked for a pause:
  server/engine/stream.py), and the prefill budget is spent on
  the positions still missing, oldest request first, in chunks aligned to multiples of
  prefill_chunk whatever the budget and wherever the prompt starts: the boundaries a cold
  prefill uses, so rows copied from the cache equal the rows it would compute, bit for bit.
  A request whose last chunk is computed makes its first frame in the same step. The budget
  bounds how much a step delays the decoding streams; a step with no stream decoding delays
  nobody and gets the larger idle budget (a burst into an idle server is admitted in one step).
- Keeping prefixes. A whole aligned chunk of a prompt that starts at 0 is saved to the prefix
  cache in the step that computes it, unless a block holds it already.
- Preemption. A request ahead of its reader can give its slot back (`preempt`; the engine
  decides when: server/engine/preemption.py), a conversation's turn its conversation's slot;
  its KV waits in host memory and its stream keeps its Mimi row. Once its reader catches up it
  queues again (`resume`) and, given a slot (a turn's conversation holds it again), copies its
  KV back and decodes on at once (`swap_ins`).
- Rows. A stream's audio is decoded in a Mimi row of its own from its first slot to its end,
  so a preempted stream resumes in the same decoder state: rows = slots + preemptable streams.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from server.engine.prefix_cache import PrefixIndex
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

    @property
    def num_free(self) -> int:
        return len(self._free)


@dataclass(slots=True, frozen=True)
class PrefillChunk:
    request: Request
    start: int
    end: int

    @property
    def completes_prompt(self) -> bool:
        return self.end >= self.request.prompt_len


@dataclass(slots=True, frozen=True)
class BlockLoad:
    """Copy these prefix-cache blocks into rows [0, len(blocks) * chunk) of the request's slot."""

    request: Request
    blocks: list[int]


@dataclass(slots=True, frozen=True)
class BlockSave:
    """Once `chunk` is prefilled, copy its rows into `block` (then commit it)."""

    chunk: PrefillChunk
    block: int


@dataclass(slots=True)
class SchedulerOutput:
    admitted: list[Request] = field(default_factory=list)  # got a slot this step (or their session's)
    loads: list[BlockLoad] = field(default_factory=list)
    prefill: list[PrefillChunk] = field(default_factory=list)
    saves: list[BlockSave] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)  # feed back their last frame, make a new one
    swap_ins: list[Request] = field(default_factory=list)  # resumed: copy their KV back into their new slot
    reclaimed: list[int] = field(default_factory=list)  # sessions whose idle slot was taken

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.end - c.start for c in self.prefill)


class Scheduler:
    def __init__(self, num_slots: int, prefill_chunk: int, prefill_budget: int,
                 idle_prefill_budget: int | None = None, prefix: PrefixIndex | None = None, max_preempted: int = 0):
        if prefix is not None and prefix.block_positions != prefill_chunk:
            raise ValueError("prefix cache blocks must be prefill_chunk positions long")
        self.slots = SlotPool(num_slots)
        self.max_preempted = max_preempted
        self.rows = SlotPool(num_slots + max_preempted)  # Mimi rows
        self.preempted: list[Request] = []  # slot given back, waiting for their reader
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        self.idle_prefill_budget = max(prefill_budget, idle_prefill_budget or 0)
        self.prefix = prefix
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.held: OrderedDict[int, int] = OrderedDict()  # session -> its slot, least recently used first

    def add(self, request: Request) -> None:
        """A prepared request (its prompt is known) queues for a slot, or for its session's, ahead
        of resumed ones: it has no audio yet, their readers still have some to play."""
        request.status = RequestStatus.WAITING
        resumed = next((i for i, r in enumerate(self.waiting) if r.swapped), None)
        if resumed is None:
            self.waiting.append(request)
        else:
            self.waiting.insert(resumed, request)

    def slot_of(self, session: int) -> int | None:
        return self.held.get(session)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self._admit(out)
        decoding = any(req.status is RequestStatus.DECODING for req in self.running)
        budget = self.prefill_budget if decoding else self.idle_prefill_budget
        c = self.prefill_chunk
        for req in self.running:
            if req.status is RequestStatus.DECODING:
                if req.paused_since is None:
                    out.decode.append(req)
                continue
            start = req.num_prefilled
            while budget > 0 and start < req.prompt_len:
                end = min((start // c + 1) * c, req.prompt_len)  # aligned, whatever the budget
                if end - start > budget:
                    break
                chunk = PrefillChunk(req, start, end)
                out.prefill.append(chunk)
                self._keep(chunk, out)
                budget -= end - start
                start = end
            if start < req.prompt_len:
                budget = 0  # keep FIFO: no younger request overtakes an unfinished older prompt
        return out

    def has_work(self) -> bool:
        """Whether a step would do anything: prefill, make a frame (a paused request makes none),
        or admit a waiting request into a slot it can have."""
        if any(r.status is not RequestStatus.DECODING or r.paused_since is None for r in self.running):
            return True
        if not self.waiting:
            return False
        if self.slots.can_allocate() or any(r.session in self.held for r in self.waiting if r.session is not None):
            return True
        busy = {r.session for r in self.running} | {r.session for r in self.waiting}
        return any(s not in busy for s in self.held)

    def _admit(self, out: SchedulerOutput) -> None:
        """Turns of sessions holding a slot first (they wait for nobody), then the others in
        order while a slot can be found."""
        for req in [r for r in self.waiting if r.session is not None and r.session in self.held]:
            self.waiting.remove(req)
            self.held.move_to_end(req.session)
            self._start(req, self.held[req.session], out)
        while self.waiting:
            slot = self._free_slot(out)
            if slot is None:
                return
            req = self.waiting.popleft()
            if req.session is not None:
                self.held[req.session] = slot
            self._start(req, slot, out)

    def _free_slot(self, out: SchedulerOutput) -> int | None:
        if self.slots.can_allocate():
            return self.slots.allocate()
        busy = {r.session for r in self.running} | {r.session for r in self.waiting}
        idle = next((s for s in self.held if s not in busy), None)
        if idle is None:
            return None
        out.reclaimed.append(idle)
        return self.held.pop(idle)

    def _start(self, req: Request, slot: int, out: SchedulerOutput) -> None:
        req.slot = slot
        self.running.append(req)
        if req.swapped:  # a resumed request: its KV comes back, it decodes this step
            req.status = RequestStatus.DECODING
            out.swap_ins.append(req)
            return
        req.status = RequestStatus.PREFILLING
        req.row = self.rows.allocate()
        out.admitted.append(req)
        if self.prefix is not None and req.block_hashes and req.num_prefilled == 0:
            blocks = self.prefix.match(req.block_hashes, (req.prompt_len - 1) // self.prefill_chunk)
            if blocks:
                req.num_prefilled = len(blocks) * self.prefill_chunk
                out.loads.append(BlockLoad(req, blocks))

    def _keep(self, chunk: PrefillChunk, out: SchedulerOutput) -> None:
        k, c = divmod(chunk.start, self.prefill_chunk)
        hashes = chunk.request.block_hashes
        if self.prefix is None or c or k >= len(hashes) or chunk.end - chunk.start != self.prefill_chunk:
            return
        block = self.prefix.allocate(hashes[k])
        if block is not None:
            out.saves.append(BlockSave(chunk, block))

    def finish(self, req: Request) -> None:
        """A request ends: its slot is freed, unless its session holds it; or it leaves the queue
        (or the preempted); its Mimi row is freed (its end follows its frames through Mimi, and
        the row's next stream resets it at its first frame)."""
        if req in self.running:
            self.running.remove(req)
            if req.session is None or self.held.get(req.session) != req.slot:
                self.slots.free(req.slot)
        elif req in self.waiting:
            self.waiting.remove(req)
        elif req in self.preempted:
            self.preempted.remove(req)
        if req.row is not None:
            self.rows.free(req.row)
        req.status = RequestStatus.FINISHED

    def num_idle_held(self) -> int:
        """Slots held by conversations with no turn in the engine: a waiting request may take one."""
        busy = {r.session for r in self.running} | {r.session for r in self.waiting}
        return sum(s not in busy for s in self.held)

    def num_busy_held(self) -> int:
        """Slots held by conversations with a turn in the engine: no other request may take one."""
        return len(self.held) - self.num_idle_held()

    def can_preempt(self) -> bool:
        return len(self.preempted) < self.max_preempted

    def slots_wanted(self) -> int:
        """Waiting requests that no free slot will take (a session holding its slot takes its own)."""
        wanting = sum(r.session is None or r.session not in self.held for r in self.waiting)
        return max(0, wanting - self.slots.num_free)

    def preempt(self, req: Request) -> None:
        """A decoding request gives its slot back (the engine has copied its KV out). A
        conversation's turn gives its conversation's slot back: the KV copied out is the whole
        conversation's, and the turn takes a slot for it again when it resumes."""
        if req.status is not RequestStatus.DECODING or not self.can_preempt():
            raise RuntimeError(f"request {req.id} cannot be preempted ({req.status.value})")
        if req.session is not None and self.held.pop(req.session, None) != req.slot:
            raise RuntimeError(f"request {req.id} runs outside its conversation's slot")
        self.running.remove(req)
        self.slots.free(req.slot)
        req.slot, req.swapped = None, True
        req.status = RequestStatus.PREEMPTED
        self.preempted.append(req)

    def resume(self, req: Request) -> None:
        """A preempted request's reader caught up: it queues for a slot, behind the new requests
        (`add`)."""
        self.preempted.remove(req)
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def release(self, session: int) -> bool:
        """A session gives its slot back (closed, idle). Its turn must have ended. True when it held one."""
        if session not in self.held:
            return False
        if any(r.session == session for r in self.running):
            raise RuntimeError(f"session {session} still has a turn running in slot {self.held[session]}")
        self.slots.free(self.held.pop(session))
        return True

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)
