"""The hand-off of one request's events from the engine to its consumer, with flow control.

An output worker pushes a stream's audio and its Finished event (the engine thread pushes
Finished itself for a request that never got a slot and, once a pipeline thread has stopped, for
every request whose end it would not deliver; a request posted after the engine stopped on an
error gets it on the posting thread); a consumer either iterates synchronously
(`for ev in stream`) or asynchronously (`async for ev in stream`) on the event loop the stream
was created on. `cancel` reaches the engine through its control channel.

Flow control: the audio pushed and not yet taken by the consumer is counted. Past
`pause_after_s` seconds of it the stream asks the engine to pause the request (it keeps its
slot and KV, makes no frames), and once the consumer has caught up to half of that, to resume
it; a reader too slow for too long is ended by the engine (FinishReason.STALLED). So a slow
reader holds a bounded amount of audio, never the whole utterance. It also keeps since when
audio has waited unread without a break (`unread_since`): a consumer that takes each chunk as it
comes never has any waiting for long, one blocked by its transport's flow control (the client's
window full) has some waiting all the time (server/engine/preemption.py). Torch-free.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

from csm_core.constants import FRAME_MS
from server.engine.messages import Cancel, Control, Pause, Resume
from server.engine.types import AudioOut, Event, Finished


class RequestStream:
    def __init__(self, request_id: int, label: str, post: Callable[[Control], None], pause_after_s: float = 0.0):
        self.request_id = request_id  # minted by the engine, unique in the process
        self.label = label  # the caller's request_id
        self._post = post  # the engine's control channel
        self._pause_after_ms = pause_after_s * 1000  # 0: never pause
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._unread_ms = 0  # audio pushed and not yet taken by the consumer
        self._unread_since: float | None = None  # when _unread_ms last became non-zero
        self._paused = False
        self._finished = False  # a Finished event was pushed
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._aqueue: asyncio.Queue[Event] | None = asyncio.Queue() if self._loop else None
        self._squeue: queue.SimpleQueue[Event] = queue.SimpleQueue()

    # -- engine side -------------------------------------------------------------------
    def push(self, event: Event) -> None:
        """Deliver an event (any thread). Never raises: a closed loop means nobody listens."""
        if isinstance(event, AudioOut):
            self._count(event.frames * FRAME_MS)
        elif isinstance(event, Finished):
            self._finished = True
        if self._loop is None:
            self._squeue.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._aqueue.put_nowait, event)
        except RuntimeError:  # event loop closed: the consumer is gone
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def unread_ms(self) -> int:
        return self._unread_ms

    @property
    def unread_since(self) -> float | None:
        return self._unread_since

    @property
    def finished(self) -> bool:
        return self._finished

    def _count(self, ms: int) -> None:
        """Adds (pushed) or removes (taken) unread audio; pauses or resumes the request."""
        with self._lock:
            waited = self._unread_ms > 0
            self._unread_ms += ms
            if self._unread_ms <= 0:
                self._unread_since = None
            elif not waited:
                self._unread_since = time.monotonic()
            if not self._pause_after_ms:
                return
            if not self._paused and self._unread_ms > self._pause_after_ms:
                self._paused, message = True, Pause(self.request_id)
            elif self._paused and self._unread_ms <= self._pause_after_ms / 2:
                self._paused, message = False, Resume(self.request_id)
            else:
                return
        self._post(message)

    # -- consumer side -----------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the engine to stop this request; it frees the slot within one step."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._post(Cancel(self.request_id))

    def _taken(self, event: Event) -> Event:
        if isinstance(event, AudioOut):
            self._count(-event.frames * FRAME_MS)
        return event

    def get(self, timeout: float | None = None) -> Event:
        if self._loop is not None:
            raise RuntimeError("stream was created on an event loop: use `async for`")
        return self._taken(self._squeue.get(timeout=timeout))

    def __iter__(self) -> Iterator[Event]:
        while True:
            ev = self.get()
            yield ev
            if isinstance(ev, Finished):
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        if self._aqueue is None:
            raise RuntimeError("stream was created outside an event loop: use `for`")
        while True:
            ev = self._taken(await self._aqueue.get())
            yield ev
            if isinstance(ev, Finished):
                return
