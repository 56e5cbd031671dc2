"""csm-loadtest's driver: one request timed chunk by chunk, and the two ways of issuing them.

A closed-loop step keeps exactly N streams in flight (each worker sends its next request when
the last one ends); an open-loop step sends requests at Poisson arrival times whatever is in
flight. Every step is bounded by its request count, its duration and the run's wall deadline:
a call still open at the wall deadline reaches its gRPC deadline there.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from csm_client.aio_client import AsyncSpeechClient
from csm_wire import speech_pb2 as pb
from csm_client.request import ContextTurn

OK = "OK"


@dataclass(slots=True, frozen=True)
class Workload:
    """What every request asks for; request i of a step speaks prompts[i % len] with seed + i."""

    prompts: tuple[str, ...]
    speaker: int = 0
    context: tuple[ContextTurn, ...] = ()
    encoding: str = "pcm"
    sample_rate: int = 0
    max_audio_ms: int = 0
    temperature: float | None = None
    top_k: int | None = None
    seed: int | None = 0  # None: the server draws a random seed per request
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("the prompt set is empty")

    def text(self, index: int) -> str:
        return self.prompts[index % len(self.prompts)]

    def options(self, index: int) -> dict:
        return dict(speaker=self.speaker, context=self.context, encoding=self.encoding,
                    sample_rate=self.sample_rate, max_audio_ms=self.max_audio_ms,
                    temperature=self.temperature, top_k=self.top_k,
                    seed=None if self.seed is None else self.seed + index)


@dataclass(slots=True, frozen=True)
class StepPlan:
    """One step: `concurrency` streams in flight, or Poisson arrivals at `rate` per second."""

    concurrency: int | None = None
    rate: float | None = None
    requests: int | None = None  # most requests sent in the step
    duration_s: float | None = None  # no request is sent after this

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("a step has either a concurrency or a rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.requests is None and self.duration_s is None:
            raise ValueError("a step needs a request count or a duration to end")

    @property
    def label(self) -> str:
        return f"concurrency {self.concurrency}" if self.concurrency is not None else f"rate {self.rate:g}/s"


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it. Times are from the client's clock."""

    step: int  # -1 for warm-up requests
    index: int  # within the step
    sent_s: float  # since the step started
    status: str = OK  # gRPC status code name
    detail: str = ""  # the error message, for failed calls
    ttfa_ms: float | None = None  # send -> first audio chunk
    total_ms: float = 0.0  # send -> end of the call
    audio_s: float = 0.0  # audio received (sum of the chunks' durations)
    chunks: int = 0
    gaps_ms: list[float] = field(default_factory=list)  # between consecutive chunks
    underruns: int = 0
    worst_gap_ms: float | None = None  # the stream's worst playback gap (None: no audio)
    finish_reason: str = ""
    server_queue_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def rtf(self) -> float | None:
        """Total time / audio seconds; below 1 is faster than real time."""
        return self.total_ms / 1000.0 / self.audio_s if self.ok and self.audio_s > 0 else None


class Playback:
    """A player that starts at the first chunk and plays without pause while it has audio:
    an underrun is a chunk that arrives after everything delivered before it has been played.
    The worst gap (as the server's csm:stream_worst_gap_seconds, csm_core/continuity.py): the
    largest lateness of a chunk, arrival - (first arrival + seconds of audio before it)."""

    def __init__(self) -> None:
        self.ends_at: float | None = None
        self.underruns = 0
        self.start: float | None = None  # the first chunk with audio
        self.before_s = 0.0  # audio delivered before the next chunk
        self.worst_gap_s = 0.0

    def arrive(self, now: float, duration_s: float) -> None:
        if duration_s > 0:
            if self.start is None:
                self.start = now
            else:
                self.worst_gap_s = max(self.worst_gap_s, now - (self.start + self.before_s))
            self.before_s += duration_s
        if self.ends_at is not None and now <= self.ends_at:
            self.ends_at += duration_s
            return
        if self.ends_at is not None:
            self.underruns += 1
        self.ends_at = now + duration_s


Observer = Callable[[RequestRecord | None], None]  # None: a request was sent; a record: it ended


async def run_request(client: AsyncSpeechClient, workload: Workload, step: int, index: int,
                      step_start: float, wall_deadline: float) -> RequestRecord:
    sent = time.perf_counter()
    record = RequestRecord(step=step, index=index, sent_s=sent - step_start)
    timeout = max(0.001, min(workload.timeout_s, wall_deadline - sent))
    request_id = f"loadtest-{step if step >= 0 else 'warmup'}-{index}"
    stream = client.stream(workload.text(index), timeout=timeout, request_id=request_id, **workload.options(index))
    playback, last = Playback(), sent
    try:
        async for chunk in stream:
            now = time.perf_counter()
            if record.chunks == 0:
                record.ttfa_ms = (now - sent) * 1000.0
            else:
                record.gaps_ms.append((now - last) * 1000.0)
            last = now
            playback.arrive(now, chunk.duration_ms / 1000.0)
            record.audio_s += chunk.duration_ms / 1000.0
            record.chunks += 1
    except grpc.RpcError as error:
        record.status, record.detail = error.code().name, error.details() or ""
    record.total_ms = (time.perf_counter() - sent) * 1000.0
    record.underruns = playback.underruns
    record.worst_gap_ms = playback.worst_gap_s * 1000.0 if playback.start is not None else None
    if stream.result is not None:
        record.finish_reason = _finish_reason(stream.result.finish_reason)
        record.server_queue_ms = stream.result.queue_ms
    return record


async def run_closed_step(client: AsyncSpeechClient, workload: Workload, plan: StepPlan, step: int,
                          wall_deadline: float, observe: Observer) -> list[RequestRecord]:
    """`plan.concurrency` workers, each sending its next request as soon as its last one ends."""
    start = time.perf_counter()
    stop_sending = min(start + (plan.duration_s if plan.duration_s is not None else math.inf), wall_deadline)
    indices = itertools.count()
    records: list[RequestRecord] = []

    async def worker() -> None:
        while time.perf_counter() < stop_sending:
            index = next(indices)
            if plan.requests is not None and index >= plan.requests:
                return
            observe(None)
            record = await run_request(client, workload, step, index, start, wall_deadline)
            records.append(record)
            observe(record)

    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    return records


async def run_open_step(client: AsyncSpeechClient, workload: Workload, plan: StepPlan, step: int,
                        wall_deadline: float, observe: Observer, rng: random.Random) -> list[RequestRecord]:
    """Requests sent at Poisson arrival times (exponential gaps of mean 1 / rate)."""
    start = time.perf_counter()
    stop_sending = min(start + (plan.duration_s if plan.duration_s is not None else math.inf), wall_deadline)

    async def one(index: int) -> RequestRecord:
        record = await run_request(client, workload, step, index, start, wall_deadline)
        observe(record)
        return record

    tasks: list[asyncio.Task] = []
    arrival = start
    for index in itertools.count():
        arrival += rng.expovariate(plan.rate)
        if arrival >= stop_sending or (plan.requests is not None and index >= plan.requests):
            break
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        observe(None)
        tasks.append(asyncio.create_task(one(index)))
    return list(await asyncio.gather(*tasks))


def _finish_reason(value: int) -> str:
    return pb.FinishReason.Name(value).removeprefix("FINISH_REASON_").lower()
