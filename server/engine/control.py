"""The engine thread's control channel: any thread posts a message (server/engine/messages.py),
the engine thread takes them all at one point of its loop, before it schedules.

Made before the engine's threads, so that each is built with the `post` it reports through: the
callers and their RequestStreams, the prep thread, the Mimi thread and the output workers.
Closed when the engine stops on an error: from then on each message is refused as it is posted
(a request ends at once), so nothing waits on an engine thread that is gone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from server.engine.messages import Control


class ControlChannel:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Control] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._lock = threading.Lock()  # orders posts against `close`
        self._refuse: Callable[[Control], None] | None = None  # set by `close`

    # -- any thread --------------------------------------------------------------------
    def post(self, msg: Control) -> None:
        with self._lock:
            refuse = self._refuse
            if refuse is None:
                self._queue.put(msg)
                self._wakeup.set()
                return
        refuse(msg)

    def wake(self) -> None:
        """End the engine thread's wait without a message (it is being stopped)."""
        self._wakeup.set()

    # -- engine thread -----------------------------------------------------------------
    def drain(self) -> Iterator[Control]:
        """Every message posted so far, in order."""
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def wait(self, timeout: float) -> None:
        """Until something is posted (or `wake`), at most `timeout` seconds."""
        self._wakeup.wait(timeout)
        self._wakeup.clear()

    def close(self, refuse: Callable[[Control], None]) -> None:
        """No one will drain the channel again: `refuse(msg)` each message waiting in it, and from
        now on each message as it is posted, on the posting thread."""
        with self._lock:
            self._refuse = refuse
        for msg in self.drain():
            refuse(msg)
