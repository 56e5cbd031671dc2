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
        self._count = 0
        self._lock = threading.Lock()

    def try_admit(self) -> bool:
        with self._lock:
            if self._count >= self.capacity:
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
