"""Paced backpressure between the engine and the Mimi thread (server/engine/pacing.py)."""

import threading

import pytest

from server.engine.pacing import CALL_OVERHEAD_FRAMES, CallCostModel, PacedCredits


class FakeClock:
    """time.monotonic / time.sleep stand-ins: sleeping advances the clock."""

    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_initial_credits_are_due_at_once():
    t = FakeClock()
    credits = PacedCredits(3, t.clock, t.sleep)
    for _ in range(3):
        credits.acquire()
    assert t.slept == []


def test_released_credits_come_spread_over_the_call():
    t = FakeClock()
    credits = PacedCredits(0, t.clock, t.sleep)
    credits.release(4, spacing_s=0.1)  # a call of 4 steps expected to take 0.4 s
    for _ in range(4):
        credits.acquire()  # the engine asks right away each time: it is paced by the credits
    assert t.slept == [0.1, 0.1, 0.1]
    assert t.now == pytest.approx(100.3)


def test_a_slow_engine_is_not_held_back():
    t = FakeClock()
    credits = PacedCredits(0, t.clock, t.sleep)
    credits.release(3, spacing_s=0.1)
    for _ in range(3):
        credits.acquire()
        t.now += 0.15  # the step itself takes longer than the spacing
    assert t.slept == []


def test_earliest_credit_first_when_calls_overlap():
    t = FakeClock()
    credits = PacedCredits(0, t.clock, t.sleep)
    credits.release(2, spacing_s=1.0)  # due at 100, 101
    t.now = 100.5
    credits.release(1)  # due at 100.5 (a call started early: the estimate ran high)
    credits.acquire()  # 100 (overdue)
    credits.acquire()  # 100.5, now
    credits.acquire()  # 101
    assert t.slept == [0.5]


def test_acquire_waits_for_a_release():
    credits = PacedCredits(0)
    got = threading.Event()

    def engine():
        credits.acquire()
        got.set()

    th = threading.Thread(target=engine)
    th.start()
    assert not got.wait(0.05)
    credits.release(1)
    assert got.wait(5)
    th.join()


def test_failed_credits_wake_the_waiting_acquire_and_refuse_every_later_one():
    credits = PacedCredits(0)
    raised: list[BaseException] = []

    def engine():
        try:
            credits.acquire()
        except RuntimeError as e:
            raised.append(e)

    th = threading.Thread(target=engine)
    th.start()
    th.join(0.05)
    assert th.is_alive()  # waiting for a credit
    stopped = RuntimeError("the Mimi thread stopped")
    credits.fail(stopped)
    th.join(5)
    assert not th.is_alive() and raised == [stopped]
    credits.release(1)  # a credit given back after the failure is never taken
    with pytest.raises(RuntimeError, match="Mimi thread stopped"):
        credits.acquire()


def test_expected_call_time_from_the_nearest_measured_shape():
    cost = CallCostModel()
    assert cost.expected_step_s((8, 4)) == 0.0  # nothing timed yet: no pacing
    for shape, per_step in {(7, 4): 0.070, (7, 1): 0.100, (1, 1): 0.020}.items():
        cost.observe(shape, per_step)
    assert cost.expected_step_s((7, 4)) == 0.070
    assert cost.expected_step_s((8, 4)) == pytest.approx(0.080)  # nearest rows, scaled by rows
    assert cost.expected_step_s((2, 1)) == pytest.approx(0.040)
    # same rows, nearest steps: fewer steps per call cost more per step (the call's fixed cost)
    per_frame = 0.070 * 4 / (4 + CALL_OVERHEAD_FRAMES)
    assert cost.expected_step_s((7, 3)) == pytest.approx(per_frame * (3 + CALL_OVERHEAD_FRAMES) / 3)
    assert cost.expected_step_s((7, 3)) > 0.070
