"""Backpressure from the Mimi thread to the engine thread, paced to Mimi's speed.

At most `max_frames_per_call` steps wait for Mimi. When a Mimi call takes T steps, their T
places are given back spread over the call's expected length (one at once, then one every
call-time / T), not all at once. Without the spreading the engine, faster than Mimi, would
make T frames back to back and then stall for the rest of the call: every stream's frames
would come in lumps (gap p95 ~3x the mean) and any longer step (a prefill chunk) would land
on top of a stall. Paced, the engine makes a frame every call-time / T and spends its slack
there, so a prefill chunk that fits in the slack costs the running streams nothing.

`CallCostModel` says how long a call of a given shape (rows, steps) takes per step, from the
calls it has timed.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable

# Credits are spread at this multiple of the expected per-step call time. Early (< 1), the
# engine runs out of credits before the call ends and waits for the rest of it in one gap; late
# is safe up to T / (T - 1) (the last credit still comes before the call ends, so the next call
# finds as many steps waiting), so when in doubt, a little late.
PACE = 1.0
# Weight of the newest call in the per-shape estimate of Mimi's time per step.
PACE_EMA = 0.3
# A Mimi call's fixed cost, in frames' worth of its per-frame cost (a call of T frames costs
# about T + CALL_OVERHEAD_FRAMES frames; on 2 CPU cores, 8 rows: ~100 ms for 1 frame, ~270 ms
# for 4). Used only to guess a call shape not timed yet from one that was.
CALL_OVERHEAD_FRAMES = 0.8

Shape = tuple[int, int]  # (rows, steps) of a Mimi call


class PacedCredits:
    """A counting semaphore whose releases may be dated in the future: `acquire` takes the
    earliest credit and, when that credit is not due yet, sleeps until it is. Once `fail`ed
    (the side that gives credits back is gone), every acquire raises instead."""

    def __init__(self, count: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self._clock, self._sleep = clock, sleep
        self._due: list[float] = [0.0] * count  # sorted due times of the credits not taken
        self._cv = threading.Condition()
        self._failure: BaseException | None = None

    def acquire(self) -> None:
        with self._cv:
            while not self._due and self._failure is None:
                self._cv.wait()
            if self._failure is not None:
                raise self._failure
            due = self._due.pop(0)
        wait = due - self._clock()
        if wait > 0:
            self._sleep(wait)

    def release(self, count: int, spacing_s: float = 0.0) -> None:
        """Give back `count` credits: the first now, the others `spacing_s` apart."""
        now = self._clock()
        with self._cv:
            for i in range(count):
                bisect.insort(self._due, now + i * spacing_s)
            self._cv.notify(count)

    def fail(self, error: BaseException) -> None:
        """No credit will come back: the acquire waiting now, and every later one, raises `error`."""
        with self._cv:
            self._failure = error
            self._cv.notify_all()


class CallCostModel:
    """Seconds per step of a Mimi call, per call shape: an EMA of the calls timed."""

    def __init__(self) -> None:
        self.step_s: dict[Shape, float] = {}

    def observe(self, shape: Shape, per_step_s: float) -> None:
        last = self.step_s.get(shape)
        self.step_s[shape] = per_step_s if last is None else last + PACE_EMA * (per_step_s - last)

    def expected_step_s(self, shape: Shape) -> float:
        """As measured, else from the nearest measured shape (rows first, then steps), scaled
        to these rows (a call's cost is about linear in its rows) and steps (T frames cost about
        T + CALL_OVERHEAD_FRAMES); 0 (no pacing) until a call was timed."""
        if shape in self.step_s:
            return self.step_s[shape]
        if not self.step_s:
            return 0.0
        rows, steps = shape
        (near_rows, near_steps), per_step = min(self.step_s.items(),
                                                key=lambda kv: (abs(kv[0][0] - rows), abs(kv[0][1] - steps)))
        per_frame = per_step * near_steps / (near_steps + CALL_OVERHEAD_FRAMES)
        return per_frame * (steps + CALL_OVERHEAD_FRAMES) / steps * rows / near_rows
