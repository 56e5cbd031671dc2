"""How many requests the engine holds: submitted and not finished, at most slots + queue.

`try_admit` runs on callers' threads when they submit; `release` runs once for every request
admitted, when it finishes (RequestBooks.finish, server/engine/books.py, on the engine thread).
That is the one place a request stops being counted, whatever ended it, but for a request posted
to an engine that has stopped on an error, which is refused, and released, as it is posted
(RequestBooks.refuse).
"""

from __future__ import annotations

import threading


class Admission:
    def __init__(self, capacity: int):
        self.capacity = capacity
        # Slots no admitted request can have: conversations' slots while a turn of theirs runs or
        # waits there. Set by the engine thread each step, so the requests admitted beyond the
        # slots they can take never exceed the queue (the waiting gauge, books.py).
        self.reserved = 0
        self._count = 0
        self._lock = threading.Lock()

    def try_admit(self) -> bool:
        with self._lock:
            if self._count >= self.capacity - self.reserved:
                return False
            self._count += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._count == 0:
                raise RuntimeError("released more requests than were admitted")
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count
