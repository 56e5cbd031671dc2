"""Slow readers against normal requests, with preemption on and off, side by side in one run.

    python -m csm_bench.slow_readers --preset bench --slots 8 --slow 12 --json out.json

More clients that read slower than real time than there are slots (in another process, so this
process's GIL is the server's alone), then normal requests one after another: their time to
first audio is what preemption is for. Without it a normal request waits until a slow reader's
whole utterance has been generated; with it, a stream ahead of its reader gives its slot up.
Every slow reader must still get all of its audio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from csm_bench.loopback import Loopback
from csm_wire import speech_pb2 as pb
from server.engine.config import EngineConfig
from server.heap import tune_heap

# One process, one thread per slow reader: reads each chunk, then sleeps `slowness` times its length.
SLOW_READERS = """
import json, sys, threading, time, grpc
from csm_wire import speech_pb2 as pb
target, n, audio_ms, slowness = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = [None] * n
def reader(i):
    with grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        got, result, error, t0 = 0, None, None, time.monotonic()
        try:
            for m in ch.unary_stream("/csm.v1.Speech/Synthesize",
                    request_serializer=pb.SynthesizeRequest.SerializeToString,
                    response_deserializer=pb.SynthesizeResponse.FromString)(
                    pb.SynthesizeRequest(text=f"Slow reader {i} takes its time over every word.",
                                         max_audio_ms=audio_ms, sampling=pb.Sampling(seed=i)), timeout=3600):
                if m.HasField("audio"):
                    got += m.audio.num_samples
                    time.sleep(slowness * m.audio.duration_ms / 1000)
                else:
                    result = m.result
        except grpc.RpcError as e:  # e.g. RESOURCE_EXHAUSTED: slower than --reader-stall-s allows
            error = f"{e.code().name}: {e.details()}"
        out[i] = {"samples": got, "result_samples": result.audio_samples if result else None, "error": error,
                  "s": time.monotonic() - t0}
threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
"""


def run(preset: str, slots: int, slow: int, slow_audio_ms: int, slowness: float, normal: int, watermark: bool,
        preempt: bool, ahead_s: float, grace_s: float) -> dict:
    config = EngineConfig(model=preset, max_slots=slots, max_queue=4 * slots, watermark=watermark,
                          preempt_max=None if preempt else 0, preempt_ahead_s=ahead_s, preempt_grace_s=grace_s)
    with tempfile.TemporaryDirectory() as voices:
        server = Loopback(config, voices)
        try:
            target = f"127.0.0.1:{server.server.port}"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            readers = subprocess.Popen([sys.executable, "-c", SLOW_READERS, target, str(slow), str(slow_audio_ms),
                                        str(slowness)], stdout=subprocess.PIPE, text=True, env=env)
            deadline = time.monotonic() + 600
            while server.engine.stats().slots_in_use < slots and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(5.0)  # the slow readers settle into their pace
            ttfa = []
            for i in range(normal):
                t0 = time.monotonic()
                call = server.speech.Synthesize(pb.SynthesizeRequest(text=f"A normal request {i}.", max_audio_ms=800,
                                                                      sampling=pb.Sampling(seed=i)), timeout=3600)
                next(call)
                ttfa.append(time.monotonic() - t0)
                call.cancel()
                time.sleep(0.5)
            stats = server.engine.stats()
            out, _ = readers.communicate(timeout=3600)
        finally:
            server.close()
    slow_results = json.loads(out)
    return {
        "preemption": preempt,
        "normal_ttfa_ms": {"p50": float(np.percentile(ttfa, 50)) * 1000, "p95": float(np.percentile(ttfa, 95)) * 1000,
                           "max": max(ttfa) * 1000},
        "preemptions": stats.preemptions, "resumes": stats.resumes,
        "slow_readers_complete": all(r["samples"] == r["result_samples"] for r in slow_results),
        "slow_reader_errors": [r["error"] for r in slow_results if r["error"]],
        "slow_reader_s": [round(r["s"], 1) for r in slow_results],
    }


def main(argv: list[str] | None = None) -> int:
    tune_heap()
    p = argparse.ArgumentParser(prog="python -m csm_bench.slow_readers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="bench", help="bench, tiny or csm-1b (random weights)")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--slow", type=int, default=12, help="slow readers (more than --slots)")
    p.add_argument("--slow-audio-ms", type=int, default=12_000)
    p.add_argument("--slowness", type=float, default=3.0,
                   help="a slow reader takes this long per second of audio (slower than the server makes it: "
                        "otherwise nothing is ahead of its reader and there is nothing to preempt)")
    p.add_argument("--normal", type=int, default=10, help="normal requests, one after another")
    p.add_argument("--watermark", choices=("on", "off"), default="on")
    p.add_argument("--preemption", choices=("both", "on", "off"), default="both")
    p.add_argument("--preempt-ahead-s", type=float, default=EngineConfig().preempt_ahead_s)
    p.add_argument("--preempt-grace-s", type=float, default=EngineConfig().preempt_grace_s)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.preemption]
    results = [run(args.preset, args.slots, args.slow, args.slow_audio_ms, args.slowness, args.normal,
                   args.watermark == "on", preempt, args.preempt_ahead_s, args.preempt_grace_s) for preempt in modes]
    for r in results:
        t = r["normal_ttfa_ms"]
        print(f"preemption {'on ' if r['preemption'] else 'off'}: normal TTFA p50 {t['p50']:.0f} ms, p95 {t['p95']:.0f} "
              f"ms, max {t['max']:.0f} ms; {r['preemptions']} preemptions; slow readers complete: "
              f"{r['slow_readers_complete']}" + (f" ({len(r['slow_reader_errors'])} ended: "
                                                  f"{r['slow_reader_errors'][0]})" if r["slow_reader_errors"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
