"""Slow readers cannot starve the others: more clients that read slower than real time than there
are slots, and normal requests still get their first audio promptly, because a stream ahead of
its reader gives its slot back (preemption) and resumes once its reader catches up; the slow
readers still get all their audio. Readers in another process, a real loopback server (tiny
engine). The figure (time to first audio beside them) is printed; the bench preset's is in
docs/reliability.md (speed targets live in measurements, not in timed tests: the bound here only
tells preemption from none, where a normal request waits for a slow reader to finish)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from csm_bench.slow_readers import SLOW_READERS
from csm_client import SpeechClient

from .conftest import start_tiny_engine
from .harness import LoopbackServer, wait_for

SLOTS = 4
SLOW = 6  # slow readers
SLOW_AUDIO_MS = 6000
# Each reads at a sixth of real time: slower than the engine makes audio for 4 slots even on this
# workplace's slowest CPU (~0.5x real time each there), so the readers, not the engine, set the pace.
SLOWNESS = "6"



@pytest.fixture(scope="module")
def preempting():
    engine = start_tiny_engine(max_slots=SLOTS, stream_buffer_s=1.0, reader_stall_s=120.0, preempt_ahead_s=1.0)
    server = LoopbackServer(engine).start()
    yield server, engine
    server.stop()
    engine.shutdown()


def test_slow_readers_give_their_slots_to_the_others(preempting):
    server, engine = preempting
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    slow = subprocess.Popen([sys.executable, "-c", SLOW_READERS, server.target, str(SLOW), str(SLOW_AUDIO_MS),
                             SLOWNESS], stdout=subprocess.PIPE, text=True, env=env)  # each reads at 1/SLOWNESS of real time
    ttfa: list[float] = []
    try:
        wait_for(lambda: engine.stats().slots_in_use == SLOTS and engine.stats().preemptions >= 1, timeout=300,
                 what="the slow readers to fill the slots and get ahead of their readers")
        with SpeechClient(server.target) as client:
            for i in range(10):
                t0 = time.monotonic()
                stream = client.stream(f"A normal request {i}.", seed=i, max_audio_ms=480, timeout=120)
                next(iter(stream))  # its first AudioChunk
                ttfa.append(time.monotonic() - t0)
                stream.cancel()
                time.sleep(0.2)
        preempted_seen = engine.stats().preemptions
        out, _ = slow.communicate(timeout=300)
    finally:
        if slow.poll() is None:
            slow.kill()
    readers = json.loads(out)
    p95 = float(np.percentile(ttfa, 95))
    stats = engine.stats()
    print(f"\n{SLOW} slow readers (1/{SLOWNESS} of real time) on {SLOTS} slots: normal requests' time to first audio "
          f"p50 {np.percentile(ttfa, 50) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(ttfa) * 1000:.0f} ms; "
          f"{stats.preemptions} preemptions, {stats.resumes} resumes")
    # 0.8 s here with the grace rule (6.3-6.7 s on this VM before it); without preemption: until a slow
    # reader ends (~36 s). The 2 s target is csm_bench.slow_readers's (docs/reliability.md); CI gets slack.
    assert len(ttfa) == 10 and p95 <= 3.0, ttfa
    assert preempted_seen >= 1 and stats.resumes == stats.preemptions
    for r in readers:  # every slow reader got all of its audio, in order, to its end
        assert r["samples"] == r["result_samples"] > 0, r
    wait_for(lambda: engine.stats().slots_in_use == 0 and engine.stats().requests_preempted == 0, timeout=30,
             what="every slot to be freed")
