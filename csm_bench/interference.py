"""csm-bench's prefill-interference scenario: streams running, one long-context request injected,
and the running streams' gaps while it is encoded and prefilled against their step time."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from csm_bench.engine import EngineBench, stream
from csm_bench.measure import StreamTrace, counters_since, percentiles, run_entry, step_summary, to_ms
from csm_bench.requests import REQUEST_SEED, TEXTS, synthetic_audio
from csm_core.constants import FRAME_MS
from server.engine.types import ContextSegment, StepStats, SynthesisParams

INTERFERENCE_CONCURRENCY = 8
INTERFERENCE_STREAM_MS = 20_000  # the running streams are cancelled when the measurement is done
# Frames every running stream has received before the injection: past the start-up transient
# (admissions, Mimi catching up). Their normal step time is taken from the decode-only steps of
# the INTERFERENCE_BASELINE_S before the injection and of as long after the injected request's
# first audio: its context is encoded in between (seconds on a busy CPU), and these VMs drift.
INTERFERENCE_WARM_FRAMES = 30
INTERFERENCE_BASELINE_S = 1.5
INJECTED_AUDIO_MS = 10 * FRAME_MS


def injected_request(context_s: float) -> SynthesisParams:
    """The long-context request of the prefill-interference scenario."""
    context = (ContextSegment(speaker=1, text="An earlier turn.", audio=synthetic_audio(context_s, seed=99)),)
    return SynthesisParams(text=TEXTS[-1], speaker=0, context=context, seed=REQUEST_SEED - 1,
                           max_audio_ms=INJECTED_AUDIO_MS, request_id="bench-inject")


def prefill_interference(bench: EngineBench, requests: list[SynthesisParams], context_s: float) -> dict:
    """Run INTERFERENCE_CONCURRENCY - 1 streams, inject one request with `context_s` of
    context audio, and compare the others' per-frame gaps while it is encoded and
    prefilled with their decode-only step time around it (interference_summary). The running streams are
    cancelled once the injected one has finished and each has been heard from since."""
    inject = injected_request(context_s)
    bench.closed_loop([inject], 1, "warmup-inject")  # its Mimi encode and prefill shapes, once
    n_others = INTERFERENCE_CONCURRENCY - 1
    others = [replace(requests[i % len(requests)], request_id=f"interference-{i}",
                      max_audio_ms=INTERFERENCE_STREAM_MS) for i in range(n_others)]
    mark, before = len(bench.recorder.steps), bench.engine.counters()
    traces = [StreamTrace() for _ in range(INTERFERENCE_CONCURRENCY)]
    running, injected = traces[:n_others], traces[-1]
    with ThreadPoolExecutor(INTERFERENCE_CONCURRENCY, thread_name_prefix="bench-client") as pool:
        futures = [pool.submit(stream, bench.engine, p, t) for p, t in zip(others, running)]
        _wait_until(lambda: all(sum(t.chunk_frames) >= INTERFERENCE_WARM_FRAMES for t in running), futures,
                    f"the running streams to make {INTERFERENCE_WARM_FRAMES} frames each")
        injecting = pool.submit(stream, bench.engine, inject, injected)
        _wait_until(lambda: injected.t_done > 0 and all(t.arrivals[-1] > injected.t_done for t in running),
                    futures, "the injected request to finish and every running stream to play on")
        futures.append(injecting)
        for t in running:
            if t.handle is not None:
                t.handle.cancel()
        for f in futures:
            f.result()
    steps = bench.recorder.wait_finished(mark, sum(t.finish in ("length", "eos") for t in traces))
    bench.engine.flush()
    counters = counters_since(bench.engine.counters(), before)
    wall = max(t.t_done for t in traces) - min(t.t_submit for t in traces)
    entry = run_entry("engine-prefill-interference", INTERFERENCE_CONCURRENCY, bench.watermark, traces, wall)
    entry["max_slots"] = bench.max_slots
    entry.update(step_summary(steps, counters))
    made = [bench.recorder.frame_times.get(p.request_id, []) for p in others]
    entry["interference"] = interference_summary(running, made, injected, steps, context_s)
    entry["gap_ms"] = entry["interference"]["gap_ms_during_prefill"]
    return entry


def interference_summary(others: list[StreamTrace], made: list[list[float]], injected: StreamTrace,
                         steps: list[tuple[float, StepStats]], context_s: float) -> dict:
    """The others' gaps between consecutive frames, as the engine made them (`made`: frame times
    per stream), against their decode-only step time around it (INTERFERENCE_BASELINE_S before
    the injection and after its first audio), in two windows:
    - prefill (the target): from the first step that prefills the injected prompt to its first
      audio. This is what chunked prefill governs.
    - encode: from its submission to its first prefill step, while the prep thread Mimi-encodes
      its context audio beside the running streams (lowest CPU priority).
    The delivered audio's gaps are reported too: they also carry Mimi's batching in time
    (several frames per call when Mimi falls behind), which happens with or without a prefill."""
    t_inject = injected.t_submit
    # the baseline before the injection: its last INTERFERENCE_BASELINE_S, once every stream is heard
    t_base = max([t_inject - INTERFERENCE_BASELINE_S] + [t.arrivals[0] for t in others if t.arrivals])
    t_first = injected.arrivals[0] if injected.arrivals else injected.t_done
    window = [(t, s) for t, s in steps if t_inject < t <= t_first]
    prefill = [(t, s) for t, s in window if s.prefill_tokens > 0]
    t_prefill = (prefill[0][0] - prefill[0][1].duration_s) if prefill else t_first  # start of its first prefill step
    made_gaps = [(a, b) for times in made for a, b in zip(times, times[1:])]
    before = [b - a for a, b in made_gaps if a >= t_base and b <= t_inject]
    during = [b - a for a, b in made_gaps if b > t_prefill and a < t_first]
    encoding = [b - a for a, b in made_gaps if b > t_inject and a < t_prefill]
    gaps = [g for t in others for g in t.gaps()]
    delivered_before = [(b - a) / n for a, b, n in gaps if a >= t_base and b <= t_inject]
    delivered_during = [(b - a) / n for a, b, n in gaps if b > t_prefill and a < t_first]
    decode_only = [(t, s.duration_s) for t, s in steps if s.prefill_tokens == 0]
    base_before = [d for t, d in decode_only if t_base <= t <= t_inject]
    base_after = [d for t, d in decode_only if t_first < t <= t_first + INTERFERENCE_BASELINE_S]
    base_steps = base_before + base_after
    # time the engine thread spent between consecutive steps in the window
    between = [t - s.duration_s - t_prev for (t_prev, _), (t, s) in zip(window, window[1:])]
    base_step_s = sum(base_steps) / len(base_steps) if base_steps else None
    during_p, encoding_p = percentiles(during, with_max=True), percentiles(encoding, with_max=True)

    def over_base(p: dict | None) -> float | None:
        return round(p["p95"] / (base_step_s * 1000), 3) if p is not None and base_step_s else None

    return {
        "context_s": context_s,
        "prompt_positions": injected.prompt_positions,
        "running_streams": len(others),
        "injected_ttfa_ms": to_ms(t_first - t_inject),
        "encode_ms": to_ms(t_prefill - t_inject),
        "baseline_step_ms": None if base_step_s is None else to_ms(base_step_s),
        "baseline_step_ms_before": to_ms(sum(base_before) / len(base_before)) if base_before else None,
        "baseline_step_ms_after": to_ms(sum(base_after) / len(base_after)) if base_after else None,
        "baseline_gap_ms": percentiles(before, with_max=True),
        "gap_ms_during_prefill": during_p,
        "gap_p95_over_baseline_step": over_base(during_p),  # the target: <= 2
        "gap_ms_during_encode": encoding_p,
        "encode_gap_p95_over_baseline_step": over_base(encoding_p),
        "delivered_gap_ms_before": percentiles(delivered_before, with_max=True),
        "delivered_gap_ms_during_prefill": percentiles(delivered_during, with_max=True),
        "prefill_steps": len(prefill),
        "prefill_tokens": sum(s.prefill_tokens for _, s in prefill),
        "prefill_step_ms_max": to_ms(max(s.duration_s for _, s in prefill)) if prefill else None,
        "between_steps_ms_max": to_ms(max(between)) if between else None,
    }


def _wait_until(condition: Callable[[], bool], futures: list[Future], what: str, timeout_s: float = 600) -> None:
    """Poll `condition`; stop early when a stream has ended (its failure is raised here)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for f in futures:
            if f.done():
                f.result()
                return
        if condition():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.002)
