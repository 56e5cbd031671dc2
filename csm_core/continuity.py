"""Playback continuity of one audio stream: its worst gap. Torch-free.

A player starts at the first audio chunk's arrival and plays without pause, so chunk i is due
at  first arrival + seconds of audio before it. Its lateness is  arrival - due;  the stream's
worst gap is the largest lateness over its chunks (0 when every chunk came in time). It is how
long such a player would have been starved: with one stall, that stall; with several, a player
that waits whenever it runs dry has waited this long in all. The server measures it at the
hand-off to the transport (csm:stream_worst_gap_seconds), csm-bench at the engine's stream and
csm-loadtest (its own copy, client/csm_client/loadtest_run.py) where the client receives it.
"""

from __future__ import annotations

from collections.abc import Iterable

NO_GAP_S = 0.1  # a stream whose worst gap is at most this plays "without a gap"


class WorstGap:
    """Fed every chunk as it arrives; `worst_s` is the stream's worst gap so far."""

    __slots__ = ("_start", "_before_s", "worst_s")

    def __init__(self) -> None:
        self._start: float | None = None  # arrival of the first chunk with audio
        self._before_s = 0.0  # seconds of audio that arrived before the next chunk
        self.worst_s = 0.0

    @property
    def started(self) -> bool:
        return self._start is not None

    def arrive(self, now: float, duration_s: float) -> None:
        """A chunk of `duration_s` seconds of audio arrived at `now` (seconds, any monotonic clock);
        chunks without audio (headers, metadata) starve nothing and are not counted."""
        if duration_s <= 0:
            return
        if self._start is None:
            self._start = now
        else:
            self.worst_s = max(self.worst_s, now - (self._start + self._before_s))
        self._before_s += duration_s


def worst_gap(chunks: Iterable[tuple[float, float]]) -> float:
    """The worst gap of a stream given as (arrival, duration) pairs, in arrival order."""
    gap = WorstGap()
    for now, duration_s in chunks:
        gap.arrive(now, duration_s)
    return gap.worst_s
