"""csm-loadtest's live progress line on standard error (rewritten in place on a terminal)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from csm_client.loadtest_run import RequestRecord
from csm_client.loadtest_stats import percentile


class Progress:
    def __init__(self, quiet: bool, out: TextIO = sys.stderr):
        self._quiet = quiet
        self._out = out
        self._tty = out.isatty()
        self._label = ""
        self._planned: int | None = None
        self._start = time.monotonic()
        self._sent = self._ok = self._errors = 0
        self._ttfa: list[float] = []
        self._rtf: list[float] = []

    def begin(self, label: str, planned: int | None) -> None:
        self._label, self._planned, self._start = label, planned, time.monotonic()
        self._sent = self._ok = self._errors = 0
        self._ttfa, self._rtf = [], []

    def observe(self, record: RequestRecord | None) -> None:
        if record is None:
            self._sent += 1
        elif record.ok:
            self._ok += 1
            if record.ttfa_ms is not None:
                self._ttfa.append(record.ttfa_ms)
            if record.rtf is not None:
                self._rtf.append(record.rtf)
        else:
            self._errors += 1

    def line(self) -> str:
        done = self._ok + self._errors
        of = f"/{self._planned}" if self._planned is not None else ""
        ttfa, rtf = percentile(self._ttfa, 50), percentile(self._rtf, 50)
        return (f"[{self._label}] {done}{of} done, ok {self._ok}, errors {self._errors}, "
                f"in flight {self._sent - done}, TTFA p50 {'-' if ttfa is None else f'{ttfa:.0f} ms'}, "
                f"RTF p50 {'-' if rtf is None else f'{rtf:.2f}'}, {time.monotonic() - self._start:.1f} s")

    def say(self, message: str) -> None:
        if not self._quiet:
            print(("\r\033[K" if self._tty else "") + message, file=self._out, flush=True)

    async def refresh(self) -> None:
        """Rewrites the line 4 times a second on a terminal, else prints it every 10 s; cancel to stop."""
        interval = 0.25 if self._tty else 10.0
        while True:
            await asyncio.sleep(interval)
            if self._quiet:
                continue
            if self._tty:
                print("\r\033[K" + self.line(), end="", file=self._out, flush=True)
            else:
                print(self.line(), file=self._out, flush=True)

    def end(self) -> None:
        self.say(self.line())
