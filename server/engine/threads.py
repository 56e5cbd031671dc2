"""The engine's threads: how the CPU is shared among them, and how each one is set up.

The engine thread, the prep thread, the Mimi thread and the output workers are made here
(pipeline_thread): a named daemon thread that turns autograd off, takes its share of intra-op
threads and, for background work, the lowest CPU priority before it runs. The voice encoder's
pool thread (server/voices/mimi_encoder.py) sets itself up the same way (set_up_thread).

A pipeline thread (prep, Mimi, output) that stops on an error stops the engine: the error is
reported once to the engine thread as PipelineFailed, which ends every request in flight and
tells the fatal observers, as when the engine thread itself fails (server/engine/core.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from server.engine.messages import Control, PipelineFailed

if TYPE_CHECKING:
    from server.engine.config import EngineConfig
    from server.engine.parts import EngineParts

log = logging.getLogger(__name__)

# Niceness of background work (context audio, voices): the lowest, so that on a busy CPU the
# running streams come first (SCHED_IDLE would starve context requests on a saturated server).
BACKGROUND_NICE = 19


@dataclass(frozen=True, slots=True)
class Threads:
    """How the CPU is shared among the pipeline's threads."""

    torch_threads: int | None  # intra-op threads of each pipeline thread; None: torch's default
    output_workers: int


def plan_threads(config: EngineConfig, parts: EngineParts) -> Threads:
    """On CPU the model, Mimi, output and prep threads run at the same time: with all cores each,
    their thread pools oversubscribe the CPU and spin against each other (measured on 2 cores:
    ~25 % fewer frames/s than one thread each), so each gets half the cores (at least 1). On
    accelerators their host threads mostly launch kernels: torch's default stands. With the
    watermark on a CPU, one output worker per share of the cores."""
    torch_threads = config.torch_threads
    if torch_threads is None and parts.device.type == "cpu":
        torch_threads = max(1, usable_cores() // 2)
    workers = config.output_workers
    if workers is None:
        workers = max(1, usable_cores() // torch_threads) if parts.watermarker and torch_threads else 1
    return Threads(torch_threads, workers)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_up_thread(torch_threads: int | None, nice: int = 0) -> None:
    """The calling thread as one of the pipeline's: no autograd, `torch_threads` intra-op threads
    (None: torch's default) and niceness `nice` (0: unchanged; Linux sets it per thread)."""
    torch.set_grad_enabled(False)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
            pass


class PipelineStopped(RuntimeError):
    """A pipeline thread stopped on an error: the engine can produce no more audio."""

    @classmethod
    def of(cls, thread: str, error: BaseException) -> PipelineStopped:
        stopped = cls(f"the pipeline thread {thread} stopped: {error!r}")
        stopped.__cause__ = error
        return stopped


def pipeline_thread(name: str, run: Callable[..., None], torch_threads: int | None, nice: int = 0,
                    args: tuple = (), report: Callable[[Control], None] | None = None,
                    on_failure: Callable[[BaseException], None] | None = None) -> threading.Thread:
    """A named daemon thread, not started yet, that sets itself up (set_up_thread), then runs `run(*args)`.
    With `report` (the engine's control channel), an error escaping `run` is logged, handed to
    `on_failure` (which releases what the engine thread may be waiting on for this thread), and
    posted once as PipelineFailed; without it, the error escapes the thread."""

    def main() -> None:
        try:
            set_up_thread(torch_threads, nice)
            run(*args)
        except BaseException as exc:
            if report is None:
                raise
            log.critical("the pipeline thread %s stopped; the engine stops", name, exc_info=exc)
            try:
                if on_failure is not None:
                    on_failure(exc)
            finally:
                report(PipelineFailed(name, exc))

    return threading.Thread(target=main, name=name, daemon=True)
