"""csm-bench's engine mode: one Engine, exactly N requests in flight (closed loop), every
AudioOut timed as it reaches the consumer and every engine step recorded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch

from csm_bench.measure import StreamTrace, counters_since, run_entry, step_summary
from csm_bench.requests import WARMUP_AUDIO_MS
from csm_core.companions import Companions
from server.engine.config import EngineConfig
from server.engine.engine import Engine, build
from server.engine.types import AudioOut, Finished, FinishReason, PipelineCounters, StepStats, SynthesisParams


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
