"""The hand-off of one request's events from the engine to its consumer.

An output worker pushes a stream's audio and its Finished event (the engine thread pushes
Finished itself for a request that never got a slot); a consumer either iterates
synchronously (`for ev in stream`) or asynchronously (`async for ev in stream`) on the event
loop the stream was created on. `cancel` reaches the engine through its control channel.
Torch-free.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from server.engine.types import Event, Finished


class RequestStream:
    def __init__(self, request_id: int, label: str, on_cancel: Callable[[int], None]):
        self.request_id = request_id  # minted by the engine, unique in the process
        self.label = label  # the caller's request_id
        self._on_cancel = on_cancel
        self._cancelled = threading.Event()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._aqueue: asyncio.Queue[Event] | None = asyncio.Queue() if self._loop else None
        self._squeue: queue.SimpleQueue[Event] = queue.SimpleQueue()

    # -- engine side -------------------------------------------------------------------
    def push(self, event: Event) -> None:
        """Deliver an event (any thread). Never raises: a closed loop means nobody listens."""
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

    # -- consumer side -----------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the engine to stop this request; it frees the slot within one step."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._on_cancel(self.request_id)

    def get(self, timeout: float | None = None) -> Event:
        if self._loop is not None:
            raise RuntimeError("stream was created on an event loop: use `async for`")
        return self._squeue.get(timeout=timeout)

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
            ev = await self._aqueue.get()
            yield ev
            if isinstance(ev, Finished):
                return
