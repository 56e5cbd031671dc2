"""What csm-bench measures: each request's trace as its consumer saw it, and the summaries of a
run (throughput, time to first audio, gaps between chunks, each stream's worst playback gap, the
engine step's breakdown)."""

from __future__ import annotations

from dataclasses import astuple, dataclass, field

import numpy as np

from csm_core.constants import FRAME_MS
from csm_core.continuity import NO_GAP_S, worst_gap
from server.engine.stream import RequestStream
from server.engine.types import PipelineCounters, StepStats

FRAME_S = FRAME_MS / 1000
STEP_KEYS = ("backbone", "depth", "mimi", "other")  # StepStats.breakdown_s, in this order


def to_ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def percentiles(seconds: list[float], with_max: bool = False) -> dict[str, float] | None:
    """p50 / p95 (and max) in ms; None when there is nothing to measure."""
    if not seconds:
        return None
    values = np.asarray(seconds, dtype=np.float64)
    out = {"p50": to_ms(float(np.percentile(values, 50))), "p95": to_ms(float(np.percentile(values, 95)))}
    if with_max:
        out["max"] = to_ms(float(values.max()))
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

    def worst_gap_s(self) -> float | None:
        """The stream's worst playback gap (csm_core/continuity.py); None without audio."""
        if not self.arrivals:
            return None
        return worst_gap(zip(self.arrivals, (n * FRAME_S for n in self.chunk_frames)))

    def gaps(self) -> list[tuple[float, float, int]]:
        """(previous arrival, arrival, frames of the arriving chunk) for every chunk after the first."""
        return [(self.arrivals[i - 1], self.arrivals[i], self.chunk_frames[i]) for i in range(1, len(self.arrivals))]


def run_entry(mode: str, concurrency: int, watermark: bool, traces: list[StreamTrace], wall_s: float) -> dict:
    frames = sum(t.frames for t in traces)
    audio_s = frames * FRAME_S
    gaps = [g for t in traces for g in t.gaps()]
    worst = [w for w in (t.worst_gap_s() for t in traces) if w is not None]
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
        "worst_gap_ms": worst_gap_summary(worst),
        "per_request": [{"frames": t.frames, "samples": t.samples, "finish": t.finish,
                         "prompt_positions": t.prompt_positions,
                         "ttfa_ms": None if t.ttfa_s is None else to_ms(t.ttfa_s)} for t in traces],
    }



def worst_gap_summary(worst: list[float]) -> dict | None:
    """Streams' worst gaps (seconds): p50 / p95 / p99 in ms and the share with none over NO_GAP_S."""
    if not worst:
        return None
    values = np.asarray(worst, dtype=np.float64)
    out = {f"p{q}": to_ms(float(np.percentile(values, q))) for q in (50, 95, 99)}
    return {**out, "max": to_ms(float(values.max())), "no_gap_share": round(float(np.mean(values <= NO_GAP_S)), 4)}


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
        "breakdown_ms": {**{k: to_ms(v) for k, v in breakdown.items()}, "mimi_busy": to_ms(counters.mimi_busy_s / n),
                         "watermark": to_ms(counters.output_busy_s / n)},
        "mimi_frames_per_call": round(counters.mimi_frames / counters.mimi_calls, 2) if counters.mimi_calls else None,
        "steps": len(stats),
        "step_ms": to_ms(step_s),
        "mean_batch": round(sum(s.decoding for s in stats) / n, 3),
        "other_frac": round(breakdown["other"] / step_s, 4) if step_s > 0 else None,
    }
