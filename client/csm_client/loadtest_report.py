"""csm-loadtest's outputs: the terminal table, the JSON document and the CSV files."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from csm_client.loadtest_run import RequestRecord
from csm_client.loadtest_stats import (
    RTF_DEFINITION, THROUGHPUT_DEFINITION, TTFA_DEFINITION, UNDERRUN_DEFINITION, WORST_GAP_DEFINITION, Slo,
    StepSummary, slo_max_load,
)


@dataclass(slots=True)
class RunResult:
    server: dict  # target and GetModelInfo fields
    mode: str  # "concurrency" or "rate"
    settings: dict  # the workload and bounds, as given
    slo: Slo
    steps: list[StepSummary] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # steps left unrun (wall deadline or interruption)
    interrupted: bool = False

    @property
    def truncated(self) -> bool:
        return bool(self.skipped) or any(step.truncated for step in self.steps)

    def slo_max(self, mode: str) -> float | None:
        return slo_max_load(self.steps) if self.slo.given and self.mode == mode else None

    def to_json(self, with_records: bool) -> dict:
        doc = {
            "tool": "csm-loadtest",
            "server": self.server,
            "mode": self.mode,
            "settings": self.settings,
            "definitions": {"rtf": RTF_DEFINITION, "ttfa_ms": TTFA_DEFINITION, "underruns": UNDERRUN_DEFINITION,
                            "throughput_audio_s_per_s": THROUGHPUT_DEFINITION, "worst_gap_ms": WORST_GAP_DEFINITION},
            "rtf_definition": RTF_DEFINITION,
            "slo": self.slo.to_json() if self.slo.given else None,
            "steps": [step.to_json() for step in self.steps],
            "slo_max_concurrency": self.slo_max("concurrency"),
            "slo_max_rate": self.slo_max("rate"),
            "truncated": self.truncated,
            "skipped_steps": list(self.skipped),
            "interrupted": self.interrupted,
        }
        if with_records:
            doc["records"] = [record_json(r, self.steps) for r in self.records]
        return doc


def record_json(record: RequestRecord, steps: Sequence[StepSummary]) -> dict:
    plan = steps[record.step].plan
    load = {"concurrency": plan.concurrency} if plan.concurrency is not None else {"rate": plan.rate}
    return {
        "step": record.step, **load, "index": record.index, "status": record.status, "detail": record.detail,
        "sent_s": round(record.sent_s, 4),
        "ttfa_ms": None if record.ttfa_ms is None else round(record.ttfa_ms, 2),
        "total_ms": round(record.total_ms, 2), "audio_s": round(record.audio_s, 3),
        "rtf": None if record.rtf is None else round(record.rtf, 4),
        "chunks": record.chunks, "max_gap_ms": round(max(record.gaps_ms), 2) if record.gaps_ms else None,
        "gaps_ms": [round(g, 2) for g in record.gaps_ms], "underruns": record.underruns,
        "worst_gap_ms": None if record.worst_gap_ms is None else round(record.worst_gap_ms, 2),
        "finish_reason": record.finish_reason,
        "server_queue_ms": None if record.server_queue_ms is None else round(record.server_queue_ms, 2),
    }


def write_json(result: RunResult, path: str, with_records: bool) -> None:
    Path(path).write_text(json.dumps(result.to_json(with_records), indent=2) + "\n")


STEP_COLUMNS = ("load", "requests", "ok", "errors", "wall_s", "requests_per_s", "throughput_audio_s_per_s",
                "ttfa_p50_ms", "ttfa_p90_ms", "ttfa_p95_ms", "ttfa_p99_ms",
                "rtf_p50", "rtf_p90", "rtf_p95", "rtf_p99", "underruns",
                "worst_gap_p50_ms", "worst_gap_p95_ms", "worst_gap_p99_ms", "no_gap_share", "slo_met")


def write_steps_csv(result: RunResult, path: str) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow((result.mode,) + STEP_COLUMNS[1:])
        for step in result.steps:
            j = step.to_json()
            writer.writerow([
                step.x, j["requests"], j["ok"], ";".join(f"{k}={v}" for k, v in j["errors"].items()),
                j["wall_s"], j["requests_per_s"], j["throughput_audio_s_per_s"],
                *(j["ttfa_ms"][f"p{q}"] for q in (50, 90, 95, 99)),
                *(j["rtf"][f"p{q}"] for q in (50, 90, 95, 99)),
                j["underruns"], *(j["worst_gap_ms"][f"p{q}"] for q in (50, 95, 99)),
                "" if j["no_gap_share"] is None else j["no_gap_share"], "" if j["slo_met"] is None else j["slo_met"],
            ])


RECORD_COLUMNS = ("step", "load", "index", "status", "sent_s", "ttfa_ms", "total_ms", "audio_s", "rtf", "chunks",
                  "max_gap_ms", "underruns", "worst_gap_ms", "finish_reason", "server_queue_ms", "detail")


def write_records_csv(result: RunResult, path: str) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(RECORD_COLUMNS)
        for record in result.records:
            j = record_json(record, result.steps)
            j["load"] = j.get("concurrency", j.get("rate"))
            writer.writerow(["" if j[c] is None else j[c] for c in RECORD_COLUMNS])


def table(result: RunResult) -> str:
    """The summary table, one row per step, then the errors by code."""
    head = (f"{result.mode:>11} {'reqs':>5} {'ok':>5} {'err':>5} {'req/s':>7} {'audio s/s':>9}  "
            f"{'TTFA ms p50/p90/p95/p99':>27}  {'RTF p50/p90/p95/p99':>23} {'underruns':>9}  "
            f"{'worst gap ms p50/p95/p99':>24} {'no gap':>6}")
    if result.slo.given:
        head += "  SLO"
    lines = [head]
    for step in result.steps:
        row = (f"{step.x:>11g} {step.requests:>5} {step.ok:>5} {step.requests - step.ok:>5} "
               f"{step.requests_per_s:>7.2f} {step.throughput:>9.2f}  "
               f"{_quad(step.ttfa_ms, '{:.0f}'):>27}  {_quad(step.rtf, '{:.2f}'):>23} {step.underruns:>9}  "
               f"{_quad(step.worst_gap_ms, '{:.0f}', (50, 95, 99)):>24} {_share(step.no_gap_share):>6}")
        if step.slo_met is not None:
            row += "  " + ("met" if step.slo_met else "missed")
        lines.append(row + (" (cut by --max-wall-s)" if step.truncated else ""))
    for step in result.steps:
        for code, n in step.errors.items():
            example = _first_line(step.error_examples[code])
            lines.append(f"errors at {step.plan.label}: {code} x{n}, e.g. {example!r}")
    if result.skipped:
        why = "interrupted" if result.interrupted else "--max-wall-s reached"
        lines.append(f"not run ({why}): {', '.join(result.skipped)}")
    if result.slo.given:
        best = result.slo_max(result.mode)
        bounds = " and ".join(
            ([f"TTFA p{result.slo.percentile} <= {result.slo.ttfa_ms:g} ms"] if result.slo.ttfa_ms is not None else [])
            + ([f"RTF p{result.slo.percentile} <= {result.slo.rtf:g}"] if result.slo.rtf is not None else []))
        verdict = f"{best:g}" if best is not None else "none of the steps"
        lines.append(f"largest {result.mode} meeting the SLO ({bounds}, error rate <= "
                     f"{result.slo.max_error_rate:g}): {verdict}")
    lines.append(f"RTF: {RTF_DEFINITION}.")
    lines.append(f"Worst gap: {WORST_GAP_DEFINITION}.")
    return "\n".join(lines)


def _first_line(text: str, limit: int = 160) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _quad(values: dict[str, float | None], fmt: str, qs: tuple[int, ...] = (50, 90, 95, 99)) -> str:
    return "/".join("-" if values[f"p{q}"] is None else fmt.format(values[f"p{q}"]) for q in qs)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
