"""csm-loadtest's numbers: percentiles, one summary per step, and the SLO check."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from csm_client.loadtest_run import RequestRecord, StepPlan

PERCENTILES = (50, 90, 95, 99)
RTF_DEFINITION = ("real-time factor = total time of the call (send -> end of stream) / seconds of audio "
                  "received; lower is better, below 1 is faster than real time")
UNDERRUN_DEFINITION = ("a chunk that arrives after a player, started at the first chunk and playing without "
                       "pause, has played all the audio delivered before it (the gap outlasts the buffered audio)")
NO_GAP_MS = 100.0  # a stream whose worst gap is at most this plays without a gap
WORST_GAP_DEFINITION = ("worst gap = the largest lateness of a stream's chunks, arrival - (first chunk's arrival + "
                        "seconds of audio before it): how long a player started at the first chunk would have "
                        "waited for audio (0: never); no_gap_share = share of successful streams whose worst gap "
                        f"is at most {NO_GAP_MS:g} ms")
TTFA_DEFINITION = "time to first audio = send -> arrival of the first audio chunk, on the client's clock"
THROUGHPUT_DEFINITION = "seconds of audio received in the step / wall seconds of the step"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in PERCENTILES}


@dataclass(slots=True, frozen=True)
class Slo:
    """A step meets the SLO when it has successes, its error rate is at most `max_error_rate`,
    and the `percentile`-th TTFA and RTF of its successful requests are within the bounds given."""

    ttfa_ms: float | None = None
    rtf: float | None = None
    percentile: int = 95
    max_error_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.percentile not in PERCENTILES:
            raise ValueError(f"the SLO percentile must be one of {PERCENTILES}, got {self.percentile}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"the SLO error rate must be in [0, 1], got {self.max_error_rate}")

    @property
    def given(self) -> bool:
        return self.ttfa_ms is not None or self.rtf is not None

    def met_by(self, step: StepSummary) -> bool:
        if step.ok == 0 or (step.requests - step.ok) / step.requests > self.max_error_rate:
            return False
        key = f"p{self.percentile}"
        if self.ttfa_ms is not None and not _within(step.ttfa_ms[key], self.ttfa_ms):
            return False
        return self.rtf is None or _within(step.rtf[key], self.rtf)

    def to_json(self) -> dict:
        return {"ttfa_ms": self.ttfa_ms, "rtf": self.rtf, "percentile": self.percentile,
                "max_error_rate": self.max_error_rate}


@dataclass(slots=True)
class StepSummary:
    plan: StepPlan
    requests: int
    ok: int
    errors: dict[str, int]  # status code name -> count
    error_examples: dict[str, str]  # status code name -> the first message with that code
    wall_s: float  # step start -> last call ended
    audio_s: float
    ttfa_ms: dict[str, float | None]
    rtf: dict[str, float | None]
    total_ms: dict[str, float | None]
    chunk_gap_ms: dict[str, float | None]
    underruns: int
    requests_with_underruns: int
    worst_gap_ms: dict[str, float | None]
    no_gap_share: float | None  # successful streams whose worst gap is at most NO_GAP_MS (None: none)
    truncated: bool  # the run's wall deadline cut the step short
    slo_met: bool | None = None  # None: no SLO given

    @property
    def x(self) -> float:
        """The step's load: its concurrency or its rate."""
        return self.plan.concurrency if self.plan.concurrency is not None else self.plan.rate

    @property
    def throughput(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict:
        load = ({"concurrency": self.plan.concurrency} if self.plan.concurrency is not None
                else {"rate": self.plan.rate})
        return {
            **load,
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(self.errors),
            "error_examples": dict(self.error_examples),
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": round(self.requests_per_s, 4),
            "ok_per_s": round(self.ok / self.wall_s, 4) if self.wall_s > 0 else 0.0,
            "audio_s": round(self.audio_s, 3),
            "throughput_audio_s_per_s": round(self.throughput, 4),
            "ttfa_ms": _rounded(self.ttfa_ms, 2),
            "rtf": _rounded(self.rtf, 4),
            "total_ms": _rounded(self.total_ms, 2),
            "chunk_gap_ms": _rounded(self.chunk_gap_ms, 2),
            "underruns": self.underruns,
            "requests_with_underruns": self.requests_with_underruns,
            "worst_gap_ms": _rounded(self.worst_gap_ms, 2),
            "no_gap_share": None if self.no_gap_share is None else round(self.no_gap_share, 4),
            "truncated": self.truncated,
            "slo_met": self.slo_met,
        }


def summarize(plan: StepPlan, records: Sequence[RequestRecord], wall_s: float, truncated: bool,
              slo: Slo) -> StepSummary:
    good = [r for r in records if r.ok]
    gaps = [g for r in records for g in r.gaps_ms]
    errors = Counter(r.status for r in records if not r.ok)
    worst = [r.worst_gap_ms for r in good if r.worst_gap_ms is not None]
    summary = StepSummary(
        plan=plan,
        requests=len(records),
        ok=len(good),
        errors=dict(sorted(errors.items())),
        error_examples={code: next(r.detail for r in records if r.status == code) for code in sorted(errors)},
        wall_s=wall_s,
        audio_s=sum(r.audio_s for r in records),
        ttfa_ms=percentiles([r.ttfa_ms for r in good if r.ttfa_ms is not None]),
        rtf=percentiles([r.rtf for r in good if r.rtf is not None]),
        total_ms=percentiles([r.total_ms for r in good]),
        chunk_gap_ms={**percentiles(gaps), "max": max(gaps, default=None)},
        underruns=sum(r.underruns for r in records),
        requests_with_underruns=sum(1 for r in records if r.underruns),
        worst_gap_ms={**percentiles(worst), "max": max(worst, default=None)},
        no_gap_share=sum(w <= NO_GAP_MS for w in worst) / len(worst) if worst else None,
        truncated=truncated,
    )
    summary.slo_met = slo.met_by(summary) if slo.given else None
    return summary


def slo_max_load(steps: Sequence[StepSummary]) -> float | None:
    """The largest concurrency (or rate) among the steps that met the SLO; None if none did."""
    met = [step.x for step in steps if step.slo_met]
    return max(met) if met else None


def _within(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound


def _rounded(values: dict[str, float | None], digits: int) -> dict[str, float | None]:
    return {k: None if v is None else round(v, digits) for k, v in values.items()}
