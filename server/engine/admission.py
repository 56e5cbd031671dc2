"""How many requests the engine holds: submitted and not finished, at most slots + queue.

`try_admit` runs on callers' threads when they submit; `release` runs on the engine thread
only, once for every request it admitted, when it finishes (RequestBooks.finish,
server/engine/books.py). That is the one place a request stops being counted, whatever ended it.
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
