"""The process's C heap. A long-running torch server's RSS creeps under glibc's defaults with no
object leaked: the soak's RSS grew 5-8% from its 200th request to its 1000th, while a census of
Python objects and tensors found nothing retained and `malloc_trim(0)` gave back 450 MiB at
once. Every step frees multi-megabyte buffers (Mimi activations, batched audio, prefill scores)
that glibc keeps in its heaps once its dynamic mmap threshold has risen, in holes that smaller
long-lived blocks then pin; every thread that contends for malloc gets a heap (arena) of its own.

- `tune_malloc` caps the arenas at 2 (the engine, Mimi, output, prep, grpc and asyncio threads
  share them). csm-serve and csm-bench call it first thing, the test process at its start (its
  servers run in it). glibc's MALLOC_ARENA_MAX wins; CSM_MALLOC_TUNING=0 leaves the defaults.
- `HeapTrimmer` gives the heaps' free pages back to the OS every few seconds (`malloc_trim`).

Fixing the mmap threshold instead (256 KiB: every large buffer mapped and unmapped for itself)
also keeps RSS flat, but cost a third of the throughput on CPU (page faults on every step's
Mimi activations): docs/reliability.md has the figures."""

from __future__ import annotations

import ctypes
import logging
import os
import threading

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2
TRIM_INTERVAL_S = 30.0


def _glibc():
    if os.environ.get("CSM_MALLOC_TUNING", "1") == "0":
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim") else None


def tune_malloc() -> dict[str, int]:
    """Caps glibc's arenas; returns what it set (nothing where the C library is not glibc, where
    tuning is off, or where the environment already sets it). Applies to arenas made after it."""
    libc = _glibc()
    if libc is None or os.environ.get("MALLOC_ARENA_MAX"):
        return {}
    if not libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS):
        log.warning("mallopt(M_ARENA_MAX, %d) failed: RSS may creep under load", MALLOC_ARENAS)
        return {}
    return {"MALLOC_ARENA_MAX": MALLOC_ARENAS}


class HeapTrimmer:
    """A daemon thread that calls malloc_trim(0) every `interval_s`: free pages inside the heaps,
    not only at their tops, go back to the OS (a few ms per call, off every hot path)."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S):
        self._libc = _glibc()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heap-trimmer", daemon=True)
        self.trims = 0

    def start(self) -> HeapTrimmer:
        if self._libc is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._interval_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._libc.malloc_trim(0)
            self.trims += 1


def trim_heap() -> None:
    """Gives the heaps' free pages back to the OS now (what HeapTrimmer does periodically)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_trimmer: HeapTrimmer | None = None


def tune_heap() -> dict[str, int]:
    """What a serving process does first: `tune_malloc`, and one HeapTrimmer for the process."""
    global _trimmer
    done = tune_malloc()
    if _trimmer is None:
        _trimmer = HeapTrimmer().start()
    return done
