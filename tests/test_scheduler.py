"""Scheduler bookkeeping with plain stand-in requests (no torch, no model)."""

import pytest

from server.engine.request import Request, RequestStatus
from server.engine.scheduler import Scheduler, SlotPool
from server.engine.types import SynthesisParams


class FakeStream:
    def push(self, ev):
        pass


def req(rid, prompt_len):
    r = Request(id=rid, params=SynthesisParams(text="x"), sink=FakeStream(), seed=0, max_frames=10, t_arrival=0.0)
    r.prompt_len = prompt_len
    return r


def test_slot_pool_verbs():
    pool = SlotPool(2)
    assert pool.can_allocate()
    a, b = pool.allocate(), pool.allocate()
    assert (a, b) == (0, 1) and not pool.can_allocate() and pool.num_used == 2
    pool.free(a)
    assert pool.allocate() == 0
    with pytest.raises(ValueError):
        pool.free(5)


def test_fifo_admission_and_chunked_prefill_under_budget():
    s = Scheduler(num_slots=2, prefill_chunk=16, prefill_budget=32)
    long, short, third = req("long", 70), req("short", 10), req("third", 5)
    for r in (long, short, third):
        s.add(r)
    plan = s.schedule()
    assert [r.id for r in plan.admitted] == ["long", "short"] and s.num_waiting == 1
    assert [(c.start, c.end) for c in plan.prefill] == [(0, 16), (16, 32)]  # budget spent on the oldest
    long.num_prefilled = 32
    plan = s.schedule()
    assert [(c.request.id, c.start, c.end) for c in plan.prefill] == [("long", 32, 48), ("long", 48, 64)]
    long.num_prefilled = 64
    plan = s.schedule()
    assert [(c.request.id, c.start, c.end) for c in plan.prefill] == [("long", 64, 70), ("short", 0, 10)]
    assert all(c.completes_prompt for c in plan.prefill)
    long.status = short.status = RequestStatus.DECODING
    plan = s.schedule()
    assert [r.id for r in plan.decode] == ["long", "short"] and not plan.prefill
    s.finish(long)
    plan = s.schedule()
    assert [r.id for r in plan.admitted] == ["third"] and third.slot == long.slot
    assert [r.id for r in plan.decode] == ["short"] and plan.prefill[0].request is third


def test_decoding_never_waits_for_prefill():
    s = Scheduler(num_slots=3, prefill_chunk=8, prefill_budget=8)
    a = req("a", 4)
    s.add(a)
    s.schedule()
    a.num_prefilled, a.status = 4, RequestStatus.DECODING
    s.add(req("big", 100))
    for _ in range(5):
        plan = s.schedule()
        assert plan.decode == [a] and plan.num_prefill_tokens == 8
        plan.prefill[0].request.num_prefilled = plan.prefill[0].end


def test_idle_budget_only_while_nothing_decodes():
    s = Scheduler(num_slots=4, prefill_chunk=8, prefill_budget=8, idle_prefill_budget=32)
    burst = [req(f"r{i}", 10) for i in range(3)]
    for r in burst:
        s.add(r)
    plan = s.schedule()  # idle server: the burst's prompts in one step
    assert plan.num_prefill_tokens == 30 and sum(c.completes_prompt for c in plan.prefill) == 3  # chunks of 8
    for r in burst:
        r.num_prefilled, r.status = 10, RequestStatus.DECODING
    s.add(req("late", 40))
    plan = s.schedule()  # streams decoding: the normal budget
    assert plan.num_prefill_tokens == 8 and len(plan.decode) == 3


def test_finish_waiting_request():
    s = Scheduler(num_slots=1, prefill_chunk=8, prefill_budget=8)
    a, b = req("a", 4), req("b", 4)
    s.add(a)
    s.add(b)
    s.schedule()
    s.finish(b)
    assert b.status is RequestStatus.FINISHED and s.num_waiting == 0


# -- conversations: a session holds its slot between turns --------------------------------
def turn(rid, session, prompt_len, start=0):
    r = req(rid, prompt_len)
    r.session, r.num_prefilled = session, start
    return r


def test_a_session_keeps_its_slot_between_turns_and_skips_the_queue():
    s = Scheduler(num_slots=2, prefill_chunk=8, prefill_budget=64)
    first = turn("t1", session=7, prompt_len=20)
    s.add(first)
    plan = s.schedule()
    assert plan.admitted == [first] and s.slot_of(7) == first.slot
    first.status = RequestStatus.DECODING
    s.finish(first)
    assert s.slots.num_used == 1  # held by the session between its turns
    other, blocked = req("other", 4), req("blocked", 4)
    second = turn("t2", session=7, prompt_len=30, start=23)  # its prompt starts after the kept rows
    for r in (other, blocked, second):
        s.add(r)
    plan = s.schedule()
    assert plan.admitted == [second, other] and second.slot == first.slot and list(s.waiting) == [blocked]
    assert not plan.reclaimed  # the session has a turn in the engine
    assert [(c.start, c.end) for c in plan.prefill if c.request is second] == [(23, 24), (24, 30)]  # aligned


def test_an_idle_session_slot_is_reclaimed_for_a_waiting_request():
    s = Scheduler(num_slots=1, prefill_chunk=8, prefill_budget=8)
    t = turn("t1", session=3, prompt_len=4)
    s.add(t)
    s.schedule()
    s.finish(t)
    r = req("one-shot", 4)
    s.add(r)
    plan = s.schedule()
    assert plan.reclaimed == [3] and plan.admitted == [r] and s.slot_of(3) is None
    back = turn("t2", session=3, prompt_len=9)  # queues for a slot like anyone
    s.add(back)
    assert s.schedule().admitted == [] and s.num_waiting == 1


def test_a_session_with_a_turn_in_the_engine_is_never_reclaimed():
    s = Scheduler(num_slots=1, prefill_chunk=8, prefill_budget=8)
    t = turn("t1", session=3, prompt_len=4)
    s.add(t)
    s.schedule()
    s.add(req("one-shot", 4))
    plan = s.schedule()
    assert not plan.reclaimed and not plan.admitted and s.num_waiting == 1
    with pytest.raises(RuntimeError):
        s.release(3)
    s.finish(t)
    assert s.release(3) and not s.release(3) and s.slots.num_used == 0


def test_the_waiting_gauge_counts_only_requests_no_slot_will_take():
    """Admitted requests still being prepared while slots are free are not waiting for one: the
    gauge never exceeds --max-queue (it read 6 with --max-queue 4 when it counted them)."""
    from types import SimpleNamespace

    from server.engine.admission import Admission
    from server.engine.books import RequestBooks

    s = Scheduler(num_slots=2, prefill_chunk=4, prefill_budget=8)
    admission = Admission(2 + 2)  # slots + max_queue

    class NoSessions:
        holding_slots = 0

        def __len__(self) -> int:
            return 0

    books = RequestBooks(s, NoSessions(), admission, None, False, lambda r: None,
                         SimpleNamespace(preemptions=0, resumes=0))
    for _ in range(4):
        assert admission.try_admit()  # four submitted at once, all still being prepared
    assert books.stats().requests_waiting == 2  # two will take the free slots
    first, second = req("a", 4), req("b", 4)
    s.add(first)
    s.add(second)
    s.schedule()
    assert books.stats().requests_waiting == 2 and books.stats().slots_in_use == 2


def test_a_conversation_speaking_in_its_slot_shrinks_what_one_shot_requests_may_fill():
    """While a turn runs in its conversation's slot, no one-shot request can have that slot: the
    engine admits one fewer, so those admitted beyond the slots they can take stay within the
    queue (the gauge read max_queue + 1 when it did not)."""
    from types import SimpleNamespace

    from server.engine.admission import Admission
    from server.engine.books import RequestBooks

    s = Scheduler(num_slots=2, prefill_chunk=4, prefill_budget=8)
    admission = Admission(2 + 1)  # slots + max_queue

    class OneSession:
        holding_slots = 1

        def __len__(self) -> int:
            return 1

    books = RequestBooks(s, OneSession(), admission, None, False, lambda r: None,
                         SimpleNamespace(preemptions=0, resumes=0))
    t = turn("t1", session=3, prompt_len=4)
    s.add(t)
    s.schedule()
    admission.reserved = s.num_busy_held()
    assert admission.reserved == 1
    assert admission.try_admit() and admission.try_admit()  # the free slot and the queue
    assert not admission.try_admit()
    assert books.stats().requests_waiting == 1
    s.finish(t)  # the conversation is idle: its slot can be reclaimed
    admission.reserved = s.num_busy_held()
    assert admission.reserved == 0 and admission.try_admit()
    assert books.stats().requests_waiting == 1  # three admitted, two slots they can take
