"""csm-bench: the one-request reference path against the engine, on the same requests.

    csm-bench --preset bench --concurrency 1,2,4,8,16 --json out.json

Reference mode is what the original generator does per request: build the prompt,
`generate()` the whole utterance at batch 1, Mimi-decode it in one call, watermark it in one
call. Its audio is ready only at the end, so its time to first audio is the whole request.
Engine mode keeps exactly N requests in flight (closed loop) on one Engine per watermark
setting and times every AudioOut as it reaches the consumer. Every run uses the same seeded
requests; with the random `bench` weights streams rarely end early, so runs are comparable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple, dataclass, field, replace

import numpy as np
import torch

from csm_core.audio_io import resample
from csm_core.checkpoint import load_model
from csm_core.companions import Companions, companions_for
from csm_core.constants import CSM_PUBLIC_WATERMARK_KEY, FRAME_MS, MIMI_CODEBOOK_SIZE, QUANTIZE_MODES, SAMPLE_RATE
from csm_core.framing import Segment, build_prompt
from csm_core.generate import generate
from csm_core.mimi import MimiCodec
from csm_core.sampling import SamplingParams
from csm_core.text import load_tokenizer
from csm_core.watermark import Watermarker
from server.engine.config import EngineConfig
from server.engine.engine import Engine, build
from server.heap import tune_heap
from server.engine.stream import RequestStream
from server.engine.types import (
    AudioOut, ContextSegment, Finished, FinishReason, PipelineCounters, StepStats, SynthesisParams,
)

FRAME_S = FRAME_MS / 1000
REQUEST_SEED = 1000  # request i samples with seed REQUEST_SEED + i in every run
WARMUP_AUDIO_MS = 12 * FRAME_MS  # long enough for a first and a later watermark chunk
STEP_KEYS = ("backbone", "depth", "mimi", "other")  # StepStats.breakdown_s, in this order
# Prefill interference
INTERFERENCE_CONCURRENCY = 8
INTERFERENCE_STREAM_MS = 20_000  # the running streams are cancelled when the measurement is done
# Frames every running stream has received before the injection: past the start-up transient
# (admissions, Mimi catching up). Their normal step time is taken from the decode-only steps of
# the INTERFERENCE_BASELINE_S before the injection and of as long after the injected request's
# first audio: its context is encoded in between (seconds on a busy CPU), and these VMs drift.
INTERFERENCE_WARM_FRAMES = 30
INTERFERENCE_BASELINE_S = 1.5
INJECTED_AUDIO_MS = 10 * FRAME_MS

TEXTS = (
    "Hello there, thanks for calling. How can I help you today?",
    "The weather tomorrow looks bright, with a light breeze in the afternoon.",
    "I'm not sure that's right; could you check the numbers again?",
    "Turn left at the second light and the station is on your right.",
    "We finished the first draft last night, so the review can start on Monday.",
    "Oh, that's wonderful news! Congratulations to the whole team.",
    "Please hold for a moment while I look up your order.",
    "Once upon a time, in a village by the sea, there lived an old clockmaker.",
)


# -- the request set ----------------------------------------------------------------------
def synthetic_audio(seconds: float, seed: int) -> np.ndarray:
    """Seeded noise under a syllable-rate envelope: `seconds` of mono float32 at 24 kHz."""
    n = max(1, round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)  # about 4 syllables per second
    return (0.1 * envelope * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)  # [n]


def make_requests(n: int, max_audio_ms: int, context_s: float) -> list[SynthesisParams]:
    """The fixed set every run serves: same texts, speakers, seeds and lengths."""
    requests = []
    for i in range(n):
        context = ()
        if context_s > 0:
            context = (ContextSegment(speaker=(i + 1) % 2, text=TEXTS[(i + 3) % len(TEXTS)],
                                      audio=synthetic_audio(context_s, seed=i)),)
        requests.append(SynthesisParams(text=TEXTS[i % len(TEXTS)], speaker=i % 2, context=context,
                                        seed=REQUEST_SEED + i, max_audio_ms=max_audio_ms, request_id=f"bench-{i}"))
    return requests


def injected_request(context_s: float) -> SynthesisParams:
    """The long-context request of the prefill-interference scenario."""
    context = (ContextSegment(speaker=1, text="An earlier turn.", audio=synthetic_audio(context_s, seed=99)),)
    return SynthesisParams(text=TEXTS[-1], speaker=0, context=context, seed=REQUEST_SEED - 1,
                           max_audio_ms=INJECTED_AUDIO_MS, request_id="bench-inject")


# -- measurements -------------------------------------------------------------------------
def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def percentiles(seconds: list[float], with_max: bool = False) -> dict[str, float] | None:
    """p50 / p95 (and max) in ms; None when there is nothing to measure."""
    if not seconds:
        return None
    values = np.asarray(seconds, dtype=np.float64)
    out = {"p50": _ms(float(np.percentile(values, 50))), "p95": _ms(float(np.percentile(values, 95)))}
    if with_max:
        out["max"] = _ms(float(values.max()))
    return out


@dataclass(slots=True)
class StreamTrace:
    """One request as its consumer saw it (engine mode), or as the reference path timed it."""

    t_submit: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # perf_counter() at each AudioOut
    chunk_frames: list[int] = field(default_factory=list)  # AudioOut.frames of each
    samples: int = 0
    frames: int = 0  # Finished.frames (reference: generated frames)
    finish: str = ""
    prompt_positions: int = 0
    t_done: float = 0.0
    handle: RequestStream | None = None  # engine mode: the stream, to cancel it

    @property
    def ttfa_s(self) -> float | None:
        return self.arrivals[0] - self.t_submit if self.arrivals else None

    def gaps(self) -> list[tuple[float, float, int]]:
        """(previous arrival, arrival, frames of the arriving chunk) for every chunk after the first."""
        return [(self.arrivals[i - 1], self.arrivals[i], self.chunk_frames[i]) for i in range(1, len(self.arrivals))]


def run_entry(mode: str, concurrency: int, watermark: bool, traces: list[StreamTrace], wall_s: float) -> dict:
    frames = sum(t.frames for t in traces)
    audio_s = frames * FRAME_S
    gaps = [g for t in traces for g in t.gaps()]
    return {
        "mode": mode,
        "concurrency": concurrency,
        "watermark": watermark,
        "requests": len(traces),
        "frames": frames,
        "audio_s": round(audio_s, 3),
        "wall_s": round(wall_s, 4),
        "throughput_audio_s_per_s": round(audio_s / wall_s, 4),
        "frames_per_s": round(frames / wall_s, 3),
        "ttfa_ms": percentiles([t.ttfa_s for t in traces if t.ttfa_s is not None]),
        "gap_ms": percentiles([(b - a) / n for a, b, n in gaps], with_max=True),  # per frame
        "chunk_gap_ms": percentiles([b - a for a, b, _ in gaps], with_max=True),  # raw, between AudioOuts
        "per_request": [{"frames": t.frames, "samples": t.samples, "finish": t.finish,
                         "prompt_positions": t.prompt_positions,
                         "ttfa_ms": None if t.ttfa_s is None else _ms(t.ttfa_s)} for t in traces],
    }


# -- reference mode -----------------------------------------------------------------------
class ReferencePath:
    """The original generator's path, one request at a time, on its own batch-1 model.

    It runs on a thread of its own, as the engine's model does: on a loaded CPU, torch called
    from the main thread was measured 10x and more slower than from a side thread, which
    would make the comparison about threads instead of batching."""

    def __init__(self, model: str, sources: Companions, device: str, dtype: str, prefill_chunk: int):
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="csm-reference")
        self.model = load_model(model, device, dtype).model
        self.device = self.model.audio_head.device
        self.model.setup_caches(1)
        self.model.set_exact(self.device.type == "cpu")  # as the engine does by default
        self.tokenizer = load_tokenizer(sources.tokenizer)
        self.mimi = MimiCodec.load(sources.mimi, self.device)
        self.prefill_chunk = prefill_chunk
        self._watermark_source = sources.watermark
        self._watermarker: Watermarker | None = None

    def watermarker(self) -> Watermarker:
        if self._watermarker is None:
            self._watermarker = Watermarker.load(self._watermark_source, str(self.device), CSM_PUBLIC_WATERMARK_KEY)
        return self._watermarker

    def close(self) -> None:
        self._thread.shutdown()

    def synthesize(self, params: SynthesisParams, watermark: bool) -> tuple[StreamTrace, dict[str, float]]:
        """One request, whole utterance. Returns its trace and its timings (prompt, generate,
        mimi, watermark) in seconds."""
        return self._thread.submit(self._synthesize, params, watermark).result()

    @torch.inference_mode()
    def _synthesize(self, params: SynthesisParams, watermark: bool) -> tuple[StreamTrace, dict[str, float]]:
        t0 = time.perf_counter()
        segments = []
        for seg in params.context:
            codes = None
            if seg.audio is not None:
                wave = resample(torch.from_numpy(seg.audio).float(), seg.sample_rate, SAMPLE_RATE)  # [samples]
                codes = self.mimi.encode([wave.to(self.mimi.device)])[0]  # [32, frames]
            segments.append(Segment(seg.speaker, seg.text, codes))
        prompt = build_prompt(self.tokenizer, segments, params.speaker, params.text)
        t1 = time.perf_counter()
        result = generate(self.model, prompt, max_frames=math.ceil(params.max_audio_ms / FRAME_MS),
                          sampling=SamplingParams(params.temperature, params.top_k), seed=params.seed,
                          prefill_chunk=self.prefill_chunk)
        t2 = time.perf_counter()
        n = result.frames.shape[0]
        pcm = torch.zeros(0)
        if n:
            codes = result.frames.t().unsqueeze(0).clamp(max=MIMI_CODEBOOK_SIZE - 1)  # [1, 32, n]
            pcm = self.mimi.decode(codes)[0].float().cpu()  # [n * 1920]
        t3 = time.perf_counter()
        if watermark and n:
            pcm = self.watermarker().apply(pcm)
        t4 = time.perf_counter()
        trace = StreamTrace(t_submit=t0, arrivals=[t4] if n else [], chunk_frames=[n] if n else [],
                            samples=pcm.numel(), frames=n, finish=result.finish_reason,
                            prompt_positions=result.prompt_frames, t_done=t4)
        return trace, {"prompt": t1 - t0, "generate": t2 - t1, "mimi": t3 - t2, "watermark": t4 - t3}


def run_reference(ref: ReferencePath, requests: list[SynthesisParams], watermark: bool) -> dict:
    done = [ref.synthesize(p, watermark) for p in requests]
    traces = [t for t, _ in done]
    entry = run_entry("reference", 1, watermark, traces, traces[-1].t_done - traces[0].t_submit)
    entry["gap_ms"] = entry["chunk_gap_ms"] = None  # whole utterances: there is no stream
    entry["breakdown_ms"] = {k: _ms(sum(tm[k] for _, tm in done) / len(done)) for k in done[0][1]}  # per request
    return entry


# -- engine mode --------------------------------------------------------------------------
class StepRecorder:
    """Every StepStats the engine reports, with the perf_counter() time it was reported, and
    when the engine made each request's frames (before Mimi and the output stage)."""

    def __init__(self, engine: Engine):
        self.steps: list[tuple[float, StepStats]] = []
        self.frame_times: dict[str, list[float]] = {}
        engine.add_step_observer(self._record)
        engine.add_frame_observer(self._frame)

    def _record(self, stats: StepStats) -> None:  # engine thread
        self.steps.append((time.perf_counter(), stats))

    def _frame(self, request_id: str, codes: torch.Tensor) -> None:  # engine thread
        self.frame_times.setdefault(request_id, []).append(time.perf_counter())

    def wait_finished(self, start: int, count: int, timeout_s: float = 60.0) -> list[tuple[float, StepStats]]:
        """The steps from index `start` on, once `count` requests have ended in them (the last
        step's observer can run after its Finished reached the consumer)."""
        deadline = time.monotonic() + timeout_s
        while True:
            window = self.steps[start:]
            if sum(len(s.finished) for _, s in window) >= count:
                return window
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine reported {count} finished requests in no step within {timeout_s} s")
            time.sleep(0.005)


def stream(engine: Engine, params: SynthesisParams, trace: StreamTrace | None = None) -> StreamTrace:
    """Submit one request and consume its events, timing each as it arrives."""
    trace = trace if trace is not None else StreamTrace()
    trace.t_submit = time.perf_counter()
    trace.handle = engine.submit(params)
    for ev in trace.handle:
        now = time.perf_counter()
        if isinstance(ev, AudioOut):
            trace.arrivals.append(now)
            trace.chunk_frames.append(ev.frames)
            trace.samples += len(ev.pcm)
        elif isinstance(ev, Finished):
            trace.t_done = now
            trace.frames, trace.finish, trace.prompt_positions = ev.frames, ev.reason.value, ev.prompt_frames
            ours = ev.reason is FinishReason.CANCELLED and trace.handle.cancelled  # cancelled by the bench
            if ev.reason in (FinishReason.ERROR, FinishReason.CANCELLED) and not ours:
                raise RuntimeError(f"request {params.request_id} ended with {ev.reason.value}: {ev.error}")
    return trace


def counters_since(after: PipelineCounters, before: PipelineCounters) -> PipelineCounters:
    """The pipeline's busy time and Mimi calls between two readings."""
    return PipelineCounters(*(a - b for a, b in zip(astuple(after), astuple(before))))


def step_summary(steps: list[tuple[float, StepStats]], counters: PipelineCounters) -> dict:
    """Per-step means. 'mimi' is the engine thread's wait for the Mimi thread (backpressure);
    'mimi_busy' and 'watermark' are the Mimi and output threads' busy time per step: they run on
    threads of their own, in parallel with the steps, so they are not part of step_ms."""
    stats = [s for _, s in steps]
    n = max(1, len(stats))
    step_s = sum(s.duration_s for s in stats) / n
    breakdown = {k: sum(s.breakdown_s.get(k, 0.0) for s in stats) / n for k in STEP_KEYS}
    return {
        "breakdown_ms": {**{k: _ms(v) for k, v in breakdown.items()}, "mimi_busy": _ms(counters.mimi_busy_s / n),
                         "watermark": _ms(counters.output_busy_s / n)},
        "mimi_frames_per_call": round(counters.mimi_frames / counters.mimi_calls, 2) if counters.mimi_calls else None,
        "steps": len(stats),
        "step_ms": _ms(step_s),
        "mean_batch": round(sum(s.decoding for s in stats) / n, 3),
        "other_frac": round(breakdown["other"] / step_s, 4) if step_s > 0 else None,
    }


class EngineBench:
    def __init__(self, model: str, sources: Companions, device: str, dtype: str, max_slots: int, watermark: bool,
                 tuning: dict | None = None):
        self.watermark = watermark
        self.max_slots = max_slots
        self.engine: Engine = build(EngineConfig(
            model=model, device=device, dtype=dtype, max_slots=max_slots, watermark=watermark,
            tokenizer=sources.tokenizer, mimi_weights=sources.mimi, watermark_weights=sources.watermark,
            **(tuning or {})))
        self.recorder = StepRecorder(self.engine)
        self.engine.start()
        if not self.engine.wait_ready(600):
            raise RuntimeError("the engine did not finish its warm-up within 600 s")

    def close(self) -> None:
        self.engine.shutdown()

    def tuning(self) -> dict:
        c = self.engine.config
        return {"prefill_chunk": c.prefill_chunk, "prefill_budget": c.prefill_budget,
                "idle_prefill_budget": c.idle_prefill_budget,
                "torch_threads": self.engine.threads.torch_threads, "mimi_frames_per_call": c.mimi_frames_per_call,
                "output_workers": self.engine.threads.output_workers, "prefix_cache_mb": c.prefix_cache_mb,
                "quantize": c.quantize, "cuda_graphs": c.cuda_graphs}

    def closed_loop(self, requests: list[SynthesisParams], concurrency: int,
                    tag: str) -> tuple[list[StreamTrace], list[tuple[float, StepStats]], PipelineCounters]:
        """Serve `requests` with exactly `concurrency` in flight. Returns the traces, the steps
        and the pipeline counters of the run."""
        mark, before = len(self.recorder.steps), self.engine.counters()
        tagged = [replace(p, request_id=f"{tag}-{i}") for i, p in enumerate(requests)]
        with ThreadPoolExecutor(concurrency, thread_name_prefix="bench-client") as pool:
            traces = list(pool.map(lambda p: stream(self.engine, p), tagged))
        steps = self.recorder.wait_finished(mark, len(requests))
        self.engine.flush()
        return traces, steps, counters_since(self.engine.counters(), before)

    def run(self, requests: list[SynthesisParams], concurrency: int, tag: str) -> dict:
        traces, steps, counters = self.closed_loop(requests, concurrency, tag)
        wall = max(t.t_done for t in traces) - min(t.t_submit for t in traces)
        entry = run_entry("engine", concurrency, self.watermark, traces, wall)
        entry["max_slots"] = self.max_slots
        entry.update(step_summary(steps, counters))
        return entry

    def warm_up(self, requests: list[SynthesisParams], concurrency: int) -> None:
        short = [replace(p, max_audio_ms=min(p.max_audio_ms, WARMUP_AUDIO_MS)) for p in requests[:concurrency]]
        self.closed_loop(short, concurrency, "warmup")

    def prefill_interference(self, requests: list[SynthesisParams], context_s: float) -> dict:
        """Run INTERFERENCE_CONCURRENCY - 1 streams, inject one request with `context_s` of
        context audio, and compare the others' per-frame gaps while it is encoded and
        prefilled with their decode-only step time around it (interference_summary). The running streams are
        cancelled once the injected one has finished and each has been heard from since."""
        inject = injected_request(context_s)
        self.closed_loop([inject], 1, "warmup-inject")  # its Mimi encode and prefill shapes, once
        n_others = INTERFERENCE_CONCURRENCY - 1
        others = [replace(requests[i % len(requests)], request_id=f"interference-{i}",
                          max_audio_ms=INTERFERENCE_STREAM_MS) for i in range(n_others)]
        mark, before = len(self.recorder.steps), self.engine.counters()
        traces = [StreamTrace() for _ in range(INTERFERENCE_CONCURRENCY)]
        running, injected = traces[:n_others], traces[-1]
        with ThreadPoolExecutor(INTERFERENCE_CONCURRENCY, thread_name_prefix="bench-client") as pool:
            futures = [pool.submit(stream, self.engine, p, t) for p, t in zip(others, running)]
            _wait_until(lambda: all(sum(t.chunk_frames) >= INTERFERENCE_WARM_FRAMES for t in running), futures,
                        f"the running streams to make {INTERFERENCE_WARM_FRAMES} frames each")
            injecting = pool.submit(stream, self.engine, inject, injected)
            _wait_until(lambda: injected.t_done > 0 and all(t.arrivals[-1] > injected.t_done for t in running),
                        futures, "the injected request to finish and every running stream to play on")
            futures.append(injecting)
            for t in running:
                if t.handle is not None:
                    t.handle.cancel()
            for f in futures:
                f.result()
        steps = self.recorder.wait_finished(mark, sum(t.finish in ("length", "eos") for t in traces))
        self.engine.flush()
        counters = counters_since(self.engine.counters(), before)
        wall = max(t.t_done for t in traces) - min(t.t_submit for t in traces)
        entry = run_entry("engine-prefill-interference", INTERFERENCE_CONCURRENCY, self.watermark, traces, wall)
        entry["max_slots"] = self.max_slots
        entry.update(step_summary(steps, counters))
        made = [self.recorder.frame_times.get(p.request_id, []) for p in others]
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
        "injected_ttfa_ms": _ms(t_first - t_inject),
        "encode_ms": _ms(t_prefill - t_inject),
        "baseline_step_ms": None if base_step_s is None else _ms(base_step_s),
        "baseline_step_ms_before": _ms(sum(base_before) / len(base_before)) if base_before else None,
        "baseline_step_ms_after": _ms(sum(base_after) / len(base_after)) if base_after else None,
        "baseline_gap_ms": percentiles(before, with_max=True),
        "gap_ms_during_prefill": during_p,
        "gap_p95_over_baseline_step": over_base(during_p),  # the target: <= 2
        "gap_ms_during_encode": encoding_p,
        "encode_gap_p95_over_baseline_step": over_base(encoding_p),
        "delivered_gap_ms_before": percentiles(delivered_before, with_max=True),
        "delivered_gap_ms_during_prefill": percentiles(delivered_during, with_max=True),
        "prefill_steps": len(prefill),
        "prefill_tokens": sum(s.prefill_tokens for _, s in prefill),
        "prefill_step_ms_max": _ms(max(s.duration_s for _, s in prefill)) if prefill else None,
        "between_steps_ms_max": _ms(max(between)) if between else None,
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


# -- command line -------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4,8, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every concurrency must be >= 1, got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("reference", "engine")]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"modes are reference and engine, comma-separated; got {text!r}")
    return modes


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csm-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="bench",
                   help="preset (bench, tiny, csm-1b: random weights) or any model source (hub id, directory)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8, 16],
                   help="engine runs: requests in flight, comma-separated")
    p.add_argument("--max-slots", type=int, default=0,
                   help="engine slots; 0: one engine per concurrency sized to it (Mimi's CPU cost grows with slots)")
    p.add_argument("--requests", type=int, default=16, help="requests in the set every run serves")
    p.add_argument("--waves", type=int, default=0,
                   help="engine: the run at concurrency N serves W x N requests instead of --requests (0: off)")
    p.add_argument("--max-audio-ms", type=int, default=4000, help="max_audio_ms of every request")
    p.add_argument("--context-s", type=float, default=0.0, help="seconds of synthetic context audio per request")
    p.add_argument("--watermark", choices=("on", "off", "both"), default="both",
                   help="runs with the watermark, without, or both (one engine each)")
    p.add_argument("--modes", type=_modes, default=["reference", "engine"], help="reference,engine or one of them")
    p.add_argument("--prefill-interference", action="store_true",
                   help="also run 7 streams, inject one long-context request and measure their gaps while it prefills")
    p.add_argument("--interference-context-s", type=float, default=20.0,
                   help="context audio of the injected request (20 s is about 250 prompt positions)")
    p.add_argument("--prefill-budget", type=int,
                   help="engine: prompt positions prefilled per step while streams decode (default: the engine's)")
    p.add_argument("--idle-prefill-budget", type=int,
                   help="engine: the same while no stream decodes (default: the engine's)")
    p.add_argument("--torch-threads", type=int, help="engine: intra-op threads per pipeline thread (default: the engine's)")
    p.add_argument("--mimi-frames-per-call", type=int, help="engine: most steps merged into one Mimi call")
    p.add_argument("--output-workers", type=int, help="engine: output (watermark) threads (default: the engine's)")
    p.add_argument("--prefix-cache-mb", type=int, default=0,
                   help="engine: prefix cache budget; off by default, so that every request (and the injected one, "
                        "sent again after the warm-up) is prefilled as on a server without it (csm-bench-voices "
                        "measures the cache)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="engine: backbone and depth decoder weights (default: the engine's)")
    p.add_argument("--cuda-graphs", type=_on_off, metavar="{on,off}",
                   help="engine on CUDA: replay each step from CUDA graphs (default: the engine's)")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress and no table")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.requests < 1:
        p.error("--requests must be >= 1")
    if args.waves < 0:
        p.error("--waves must be >= 0")
    if args.max_audio_ms < FRAME_MS:
        p.error(f"--max-audio-ms must be at least one frame ({FRAME_MS} ms)")
    if args.context_s < 0 or args.interference_context_s <= 0:
        p.error("--context-s must be >= 0 and --interference-context-s > 0")


def _fmt(value, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def format_table(runs: list[dict]) -> str:
    head = (f"{'mode':<9}{'N':>3} {'wm':<3}{'audio_s':>8}{'wall_s':>8}{'x_rt':>7}{'fps':>7}"
            f"{'ttfa50':>8}{'ttfa95':>8}{'gap50':>7}{'gap95':>7}{'gapmax':>7}"
            f"{'step':>7}{'batch':>6}{'bb':>7}{'depth':>7}{'mimi':>7}{'mimi_b':>7}{'T':>5}{'wm':>7}{'other':>7}{'oth%':>6}")
    lines = [head]
    short = {"reference": "ref", "engine": "engine", "engine-prefill-interference": "prefill+"}
    for r in runs:
        ttfa, gap, bd = r["ttfa_ms"] or {}, r["gap_ms"] or {}, r.get("breakdown_ms", {})
        other_frac = r.get("other_frac")
        lines.append(
            f"{short[r['mode']]:<9}{r['concurrency']:>3} {'on' if r['watermark'] else 'off':<3}"
            f"{r['audio_s']:>8.2f}{r['wall_s']:>8.2f}{r['throughput_audio_s_per_s']:>7.2f}{r['frames_per_s']:>7.1f}"
            f"{_fmt(ttfa.get('p50'), 8, 0)}{_fmt(ttfa.get('p95'), 8, 0)}"
            f"{_fmt(gap.get('p50'), 7)}{_fmt(gap.get('p95'), 7)}{_fmt(gap.get('max'), 7)}"
            f"{_fmt(r.get('step_ms'), 7)}{_fmt(r.get('mean_batch'), 6)}"
            + "".join(_fmt(bd.get(k), 7) for k in ("backbone", "depth", "mimi", "mimi_busy"))
            + _fmt(r.get("mimi_frames_per_call"), 5)
            + "".join(_fmt(bd.get(k), 7) for k in ("watermark", "other"))
            + _fmt(None if other_frac is None else 100 * other_frac, 6)
        )
        if r["mode"] == "reference":
            lines[-1] += f"   (per request: {', '.join(f'{k} {v:.0f}' for k, v in bd.items())} ms)"
        if "interference" in r:
            i = r["interference"]
            lines.append(f"  prefill of {i['prompt_positions']} positions ({i['prefill_steps']} steps): "
                         f"others' frame gap p95 "
                         f"{_fmt(gap.get('p95'), 0)} ms vs step {_fmt(i['baseline_step_ms'], 0)} ms "
                         f"(before {_fmt(i['baseline_step_ms_before'], 0)}, after {_fmt(i['baseline_step_ms_after'], 0)}) = "
                         f"{_fmt(i['gap_p95_over_baseline_step'], 0, 2)}x (target <= 2x); "
                         f"longest pause between steps {_fmt(i['between_steps_ms_max'], 0)} ms")
            lines.append(f"  while its {i['context_s']:g} s of context were encoded ({_fmt(i['encode_ms'], 0)} ms): "
                         f"others' frame gap p95 {_fmt((i['gap_ms_during_encode'] or {}).get('p95'), 0)} ms = "
                         f"{_fmt(i['encode_gap_p95_over_baseline_step'], 0, 2)}x; delivered audio's "
                         f"gap p95 {_fmt((i['delivered_gap_ms_before'] or {}).get('p95'), 0)} ms before the injection, "
                         f"{_fmt((i['delivered_gap_ms_during_prefill'] or {}).get('p95'), 0)} ms during its prefill")
    lines.append("ms everywhere; gaps per frame; step breakdown: engine = mean per step (mimi = waiting for "
                 "the Mimi thread, mimi_b and wm = Mimi and output threads' busy time per step, T = frames per "
                 "Mimi call); ref = mean per request")
    return "\n".join(lines)


def engine_tuning(args: argparse.Namespace) -> dict:
    """EngineConfig fields set on the command line (the others keep the engine's defaults)."""
    names = ("prefill_budget", "idle_prefill_budget", "torch_threads", "mimi_frames_per_call", "output_workers",
             "prefix_cache_mb", "quantize", "cuda_graphs")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def engine_runs(args: argparse.Namespace, sources: Companions, requests: list[SynthesisParams], watermark: bool,
                interference: bool, say: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The engine runs of one watermark setting, on one engine (plus one of 8 slots for the
    interference scenario when the concurrency list stays below 8). Returns runs and engine info."""
    runs: list[dict] = []
    on_off = "on" if watermark else "off"
    fixed = args.max_slots
    slots = fixed or max(args.concurrency)
    info = None
    bench = None
    try:
        if "engine" in args.modes:
            for n in args.concurrency:
                if bench is None or (not fixed and bench.max_slots != n):
                    if bench is not None:
                        bench.close()
                    slots = fixed or n
                    say(f"starting the engine ({args.preset}, {slots} slots, watermark {on_off})")
                    bench = EngineBench(args.preset, sources, args.device, args.dtype, slots, watermark, engine_tuning(args))
                    info, tuning = bench.engine.info(), bench.tuning()
                    bench.warm_up(requests, slots)
                say(f"engine, concurrency {n}, watermark {on_off}")
                served = requests[: args.waves * n] if args.waves else requests[: args.requests]
                runs.append(bench.run(served, n, f"c{n}"))
        if bench is None or (interference and slots != INTERFERENCE_CONCURRENCY and not fixed):
            if bench is not None:
                bench.close()
            slots = fixed or INTERFERENCE_CONCURRENCY
            bench = EngineBench(args.preset, sources, args.device, args.dtype, slots, watermark, engine_tuning(args))
            info, tuning = bench.engine.info(), bench.tuning()
            bench.warm_up(requests, slots)
        if interference:
            say(f"prefill interference: {args.interference_context_s:g} s of context into "
                f"{INTERFERENCE_CONCURRENCY - 1} running streams, watermark {on_off}")
            runs.append(bench.prefill_interference(requests, args.interference_context_s))
    finally:
        bench.close()
    return runs, {"device": info.device, "dtype": info.dtype, "engine": tuning}


def main(argv: list[str] | None = None) -> int:
    tune_heap()  # the allocator csm-serve runs with (server/heap.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    sources = companions_for(args.preset)
    requests = make_requests(max(args.requests, args.waves * max(args.concurrency)), args.max_audio_ms, args.context_s)
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.watermark]
    runs: list[dict] = []
    report = {"preset": args.preset, "device": args.device, "dtype": args.dtype, "requests": args.requests,
              "waves": args.waves, "max_audio_ms": args.max_audio_ms, "context_s": args.context_s,
              "concurrency": args.concurrency, "runs": runs}
    if "reference" in args.modes:
        say(f"loading the reference path ({args.preset})")
        ref = ReferencePath(args.preset, sources, args.device, args.dtype, EngineConfig().prefill_chunk)
        report["device"] = str(ref.device)
        report["dtype"] = str(next(ref.model.parameters()).dtype).replace("torch.", "")
        try:
            ref.synthesize(replace(requests[0], max_audio_ms=min(args.max_audio_ms, WARMUP_AUDIO_MS)),
                           True in settings)
            for wm in settings:
                say(f"reference, watermark {'on' if wm else 'off'}")
                runs.append(run_reference(ref, requests[: args.requests], wm))
        finally:
            ref.close()
        del ref  # its model's memory goes back before the engines load theirs
    for wm in settings:
        # the interference scenario runs once, without the watermark when that is measured
        interference = args.prefill_interference and wm == settings[0]
        if "engine" in args.modes or interference:
            engine_run_list, info = engine_runs(args, sources, requests, wm, interference, say)
            runs.extend(engine_run_list)
            report.update(info)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if not args.quiet:
        print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
