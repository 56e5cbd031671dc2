"""CreateVoice's own queue: creations run one at a time on a thread of their own, at most
`max_pending` of them admitted at once (the one running and those waiting); past that a call is
refused at once with QueueFull (RESOURCE_EXHAUSTED and a retry delay). Torch-free.

A creation decodes its audio, waits for the encoder's one thread (server/voices/mimi_encoder.py)
and writes a file: seconds of waiting that must not sit in the event loop's shared thread pool
(asyncio.to_thread), where GetVoice, ListVoices, the HTTP API's parsing and the MP3/Opus/AAC
encoders of running streams each need a thread at once. Creations are serial anyway (one
encoder), so one thread here loses nothing and holds the decoded audio of one creation at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from server.engine.types import QueueFull

T = TypeVar("T")

FIRST_GUESS_S = 1.0  # a creation's time before one was measured
_SMOOTHING = 0.3  # weight of the latest creation in the running mean


class CreateQueue:
    def __init__(self, max_pending: int):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csm-voice-create")
        self._lock = threading.Lock()
        self._pending = 0  # admitted, not finished: running or waiting
        self._mean_s = FIRST_GUESS_S  # a creation's time on the thread, a running mean

    @property
    def pending(self) -> int:
        return self._pending

    def retry_after_s(self) -> float:
        """When the creations admitted now will have run, by the running mean (at least 1 s)."""
        return max(1.0, self._mean_s * self._pending)

    async def run(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) on the queue's thread. QueueFull when `max_pending` creations are admitted
        already. A caller that goes away while its creation waits takes it out of the queue; one
        that goes away while it runs does not stop it (the voice may still be stored)."""
        with self._lock:
            if self._pending >= self.max_pending:
                retry = self.retry_after_s()
                raise QueueFull(f"{self._pending} voice creations are running or waiting, this server's limit: "
                                f"retry in about {retry:.0f} s", retry)
            self._pending += 1
        future = self._pool.submit(self._timed, fn, *args)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _timed(self, fn: Callable[..., T], *args) -> T:
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            elapsed = time.monotonic() - t0
            with self._lock:
                self._mean_s += _SMOOTHING * (elapsed - self._mean_s)

    def _release(self, _: Future) -> None:
        """Runs once per admitted creation: when it finishes, fails, or is cancelled before it ran."""
        with self._lock:
            self._pending -= 1
