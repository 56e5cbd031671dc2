"""Soak and fault suite: many requests at concurrency 12 against a real loopback server (tiny
preset, real Mimi, real watermark), ~20% cancelled by their client, ~10% with short deadlines,
some with context audio, and faults injected at a low rate in every stage: prep (Mimi encode),
the model step for one slot (prefill), the Mimi decode, the watermark and the output encoder.

It holds: no stream hangs, no slot or queued request is left behind, the server's per-code
call counts equal what the clients saw (but for a client's cancel or deadline that crossed the
server's final status: counted under the status the server sent), and memory stays flat:
RSS grows < 5% from the 200th request to the last (each the mean over 100 requests).
The run ends after CSM_SOAK_REQUESTS requests (default 1000) or once CSM_SOAK_SECONDS have passed
(default 480; the watermark bounds the pace, ~3x apart between this workplace's CPUs), but never
before MIN_REQUESTS; docs/reliability.md has the figures."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest

import server.engine.runner as runner_module
import server.servicer as servicer_module
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc
from server.engine.config import EngineConfig
from server.engine.engine import build
from server.engine.parts import load_parts

from e2e.harness import LoopbackServer, wait_for
from .faults import FaultPlan, FaultyCodec, FaultyEncoder, FaultyWatermarker, faulty_prefill

REQUESTS = int(os.environ.get("CSM_SOAK_REQUESTS", "1000"))
SECONDS = float(os.environ.get("CSM_SOAK_SECONDS", "480"))
MIN_REQUESTS = min(REQUESTS, 400)  # RSS is compared from RSS_MARK on, over 100-request means
CONCURRENCY = 12
RSS_MARK = 200  # memory is compared from this request on (allocators and caches warm by then)
HANG_S = 120.0  # a call still open after this long is a hung stream
RATES = {"prep": 0.2, "model step": 0.01, "mimi": 0.004, "watermark": 0.05, "encoder": 0.003}  # watermark: per batched call


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.fixture(scope="module")
def soak_server():
    plan = FaultPlan(RATES)
    config = EngineConfig(model="tiny", device="cpu", dtype="float32", watermark=True, max_slots=8, max_queue=16)
    parts = load_parts(config)
    parts.codec = FaultyCodec(parts.codec, plan)
    parts.watermarker = FaultyWatermarker(parts.watermarker, plan)
    real_prefill, real_encoder = runner_module.prefill_slot, servicer_module.make_encoder
    runner_module.prefill_slot = faulty_prefill(real_prefill, plan)
    servicer_module.make_encoder = lambda *a: FaultyEncoder(real_encoder(*a), plan)
    plan.armed = False  # none during the warm-up
    engine = build(config, parts)
    engine.start()
    assert engine.wait_ready(300)
    plan.armed = True
    server = LoopbackServer(engine).start()
    yield server, engine, plan
    server.stop()
    engine.shutdown()
    runner_module.prefill_slot, servicer_module.make_encoder = real_prefill, real_encoder


def plan_request(i: int) -> tuple[str, pb.SynthesizeRequest, float]:
    """(kind, request, deadline) of request i: the same mix on every run."""
    rng = random.Random(i)
    draw = rng.random()
    kind = "cancel" if draw < 0.2 else "deadline" if draw < 0.3 else "normal"
    context = []
    if rng.random() < 0.15:
        pcm = (0.1 * np.random.default_rng(i).standard_normal(6400) * 32767).astype("<i2").tobytes()  # 0.4 s
        context = [pb.Segment(speaker=1, text=f"Earlier turn {i}.", audio=pb.AudioInput(
            data=pcm, encoding=pb.AUDIO_ENCODING_PCM_S16LE, sample_rate=16_000))]
    max_ms = 4000 if kind != "normal" else rng.choice((160, 240, 320, 400, 480))
    request = pb.SynthesizeRequest(text=f"Soak request {i}.", speaker=i % 2, context=context, max_audio_ms=max_ms,
                                   sampling=pb.Sampling(seed=i), request_id=f"soak-{i}")
    deadline = rng.uniform(0.4, 0.8) if kind == "deadline" else 60.0
    return kind, request, deadline


async def run_clients(target: str, n: int, on_done) -> tuple[Counter, list[str], int]:
    """Serves up to n requests, CONCURRENCY at a time, issuing no new one after SECONDS once
    MIN_REQUESTS were issued; returns the status codes the clients saw, the ids of calls that
    did not end in time (hung) and how many requests were issued."""
    seen: Counter = Counter()
    hung: list[str] = []
    t0 = time.monotonic()
    issued = [0]

    def next_index():
        while issued[0] < n and (issued[0] < MIN_REQUESTS or time.monotonic() - t0 < SECONDS):
            issued[0] += 1
            yield issued[0] - 1
    async with grpc.aio.insecure_channel(target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)

        async def one(i: int) -> None:
            kind, request, deadline = plan_request(i)
            call = stub.Synthesize(request, timeout=deadline)
            try:
                async for _ in call:
                    if kind == "cancel":
                        call.cancel()
                        break
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
            seen[(await call.code()).name] += 1

        indices = next_index()

        async def worker() -> None:
            for i in indices:
                try:
                    await asyncio.wait_for(one(i), HANG_S)
                except asyncio.TimeoutError:
                    hung.append(f"soak-{i}")
                on_done()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return seen, hung, issued[0]


@pytest.mark.timeout(1800)  # at least MIN_REQUESTS, however slow the machine
def test_soak_with_cancels_deadlines_and_faults_in_every_stage(soak_server):
    server, engine, plan = soak_server
    before = server.metrics()
    done = [0]
    samples: list[tuple[int, int]] = []  # (requests done, RSS) every 0.25 s
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            samples.append((done[0], rss_bytes()))

    def on_done() -> None:
        done[0] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    seen, hung, requests = asyncio.run(run_clients(server.target, REQUESTS, on_done))
    wall = time.monotonic() - t0
    sampling.set()
    sampler.join()
    # RSS around the mark and over the last requests, each the mean of its samples: one reading
    # would land anywhere in the heap trimmer's cycle (server/heap.py).
    window = min(50, RSS_MARK // 2)
    rss = {"mark": np.mean([r for n, r in samples if abs(n - RSS_MARK) < window]),
           "end": np.mean([r for n, r in samples if n >= requests - 2 * window])}

    assert not hung, f"{len(hung)} streams hung: {hung[:5]}"
    assert sum(seen.values()) == requests
    assert seen["CANCELLED"] >= requests // 10 and seen["DEADLINE_EXCEEDED"] >= requests // 20, seen
    assert seen["INTERNAL"] > 0 and set(seen) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL"}, seen
    assert all(plan.injected[stage] > 0 for stage in RATES), plan.injected

    def counted() -> Counter:
        after = server.metrics()
        out = Counter()
        for key, value in after.items():
            if key.startswith("csm:grpc_requests_total{") and 'method="csm.v1.Speech/Synthesize"' in key:
                code = key.split('code="')[1].split('"')[0]
                out[code] += int(value - before.get(key, 0.0))
        return +out

    wait_for(lambda: sum(counted().values()) == requests, timeout=30, what=f"the server to count every call ({counted()})")
    server_saw = counted()
    # A client's cancel or deadline and the server's final status can cross: the server ended the
    # call (a fault: INTERNAL; rarely, the last chunk: OK) while the client, already holding its
    # first chunk, cancelled locally, or its deadline fired before the status reached it (the
    # clients share this process, and its GIL, with the server's busy threads: on a slow CPU the
    # status can take longer than the server's 50 ms slack). The server counts what it sent, the
    # client what it saw; every other call must match exactly, and the server never counts a
    # cancel or a deadline the client did not see.
    ended_by_client = ("CANCELLED", "DEADLINE_EXCEEDED")
    crossed = {code: seen[code] - server_saw[code] for code in ended_by_client}
    surplus = {code: server_saw[code] - seen[code] for code in server_saw.keys() | seen.keys()
               if code not in ended_by_client}
    assert all(n >= 0 for n in crossed.values()) and all(n >= 0 for n in surplus.values()) \
        and sum(surplus.values()) == sum(crossed.values()), \
        f"the server counted {dict(server_saw)}, the clients saw {dict(seen)}"
    ended = sum(seen[code] for code in ended_by_client)
    assert sum(crossed.values()) <= max(2, ended // 2), \
        f"{crossed} crossed the server's final status: {dict(server_saw)} vs {dict(seen)}"
    wait_for(lambda: (engine.stats().slots_in_use, engine.stats().requests_waiting) == (0, 0), timeout=30,
             what=f"no slot or queued request left (stats {engine.stats()})")
    growth = (rss["end"] - rss["mark"]) / rss["mark"]
    print(f"\nsoak: {requests} requests in {wall:.0f} s, clients saw {dict(seen)} ({crossed} of the client-ended calls "
          f"crossed the server's final status), faults injected "
          f"{dict(plan.injected)}, RSS {rss['mark'] / 2**20:.0f} -> {rss['end'] / 2**20:.0f} MiB ({growth:+.1%})")
    assert growth < 0.05, f"RSS grew {growth:.1%} between request {RSS_MARK} and the last"
