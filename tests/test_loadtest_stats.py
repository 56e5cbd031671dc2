"""csm-loadtest's bookkeeping without a server: percentiles, underruns, step summaries, the SLO."""

from __future__ import annotations

import numpy as np
import pytest

from csm_client.loadtest_args import build_parser, load_prompts
from csm_client.loadtest_report import RunResult, table
from csm_client.loadtest_run import Playback, RequestRecord, StepPlan
from csm_client.loadtest_stats import Slo, percentile, slo_max_load, summarize


@pytest.mark.parametrize("values", [[3.0], [5.0, 1.0], [9.0, 2.0, 7.0, 4.0, 4.5, 100.0, 0.5]])
def test_percentiles_match_numpy(values):
    for q in (50, 90, 95, 99):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([], 50) is None


def test_underrun_is_a_chunk_after_the_buffered_audio_ran_out():
    playback = Playback()
    playback.arrive(0.0, 0.24)  # plays until 0.24
    playback.arrive(0.20, 0.96)  # in time: plays until 1.20
    playback.arrive(1.10, 0.08)  # in time: until 1.28
    assert playback.underruns == 0
    playback.arrive(1.50, 0.08)  # 0.22 s of silence first
    playback.arrive(1.60, 0.08)  # restarted at 1.50, played until 1.58
    assert playback.underruns == 2


def record(index: int, status: str = "OK", ttfa: float = 100.0, total: float = 1000.0, audio: float = 2.0):
    return RequestRecord(step=0, index=index, sent_s=0.0, status=status, ttfa_ms=ttfa if status == "OK" else None,
                         total_ms=total, audio_s=audio if status == "OK" else 0.0, chunks=3,
                         gaps_ms=[50.0, 70.0], underruns=1 if index == 0 else 0)


def test_summary_counts_errors_by_code_and_checks_the_slo():
    records = [record(0, ttfa=100.0), record(1, ttfa=300.0, total=3000.0), record(2, "RESOURCE_EXHAUSTED"),
               record(3, "RESOURCE_EXHAUSTED"), record(4, "INVALID_ARGUMENT")]
    plan = StepPlan(concurrency=4, requests=5)
    strict = summarize(plan, records, wall_s=2.0, truncated=False, slo=Slo(ttfa_ms=500.0))
    assert (strict.requests, strict.ok, strict.errors) == (5, 2, {"INVALID_ARGUMENT": 1, "RESOURCE_EXHAUSTED": 2})
    assert strict.throughput == pytest.approx(4.0 / 2.0) and strict.requests_per_s == pytest.approx(2.5)
    assert strict.rtf["p50"] == pytest.approx((0.5 + 1.5) / 2) and strict.ttfa_ms["p99"] <= 300.0
    assert strict.underruns == 1 and strict.requests_with_underruns == 1 and strict.chunk_gap_ms["max"] == 70.0
    assert strict.slo_met is False, "3 of 5 failed and the SLO allows no errors"
    tolerant = summarize(plan, records, 2.0, False, Slo(ttfa_ms=500.0, rtf=2.0, max_error_rate=0.6))
    assert tolerant.slo_met is True
    assert summarize(plan, records, 2.0, False, Slo(ttfa_ms=200.0, max_error_rate=0.6)).slo_met is False
    assert summarize(plan, records, 2.0, False, Slo()).slo_met is None


def test_largest_load_meeting_the_slo_and_the_table():
    slo = Slo(rtf=1.0)
    steps = [summarize(StepPlan(concurrency=n, requests=1), [record(0, total=total)], 1.0, False, slo)
             for n, total in ((1, 1000.0), (2, 1500.0), (4, 2500.0))]
    assert [s.slo_met for s in steps] == [True, True, False]
    assert slo_max_load(steps) == 2
    result = RunResult(server={"target": "x"}, mode="concurrency", settings={}, slo=slo, steps=steps)
    text = table(result)
    assert "largest concurrency meeting the SLO (RTF p95 <= 1, error rate <= 0): 2" in text
    assert result.to_json(with_records=False)["slo_max_concurrency"] == 2


def test_step_plans_are_bounded():
    with pytest.raises(ValueError):
        StepPlan(concurrency=2)
    with pytest.raises(ValueError):
        StepPlan(concurrency=2, rate=1.0, requests=1)
    with pytest.raises(ValueError):
        Slo(percentile=80)


def test_the_default_prompt_set_ships():
    parser = build_parser()
    prompts = load_prompts(parser.parse_args([]), parser)
    assert len(prompts) >= 20 and all(p and not p.startswith("#") for p in prompts)


def test_worst_gaps_are_summarized_over_successful_streams():
    records = [record(i) for i in range(4)] + [record(4, "UNAVAILABLE")]
    for r, worst in zip(records, (0.0, 50.0, 100.0, 400.0, 900.0)):
        r.worst_gap_ms = worst
    step = summarize(StepPlan(concurrency=1, requests=5), records, 1.0, False, Slo())
    assert step.worst_gap_ms["max"] == 400.0 and step.worst_gap_ms["p50"] == pytest.approx(75.0)
    assert step.no_gap_share == pytest.approx(3 / 4)  # at most 100 ms, failed calls left out
    doc = step.to_json()
    assert doc["no_gap_share"] == 0.75 and doc["worst_gap_ms"]["p99"] <= 400.0
    empty = summarize(StepPlan(concurrency=1, requests=1), [record(0, "UNAVAILABLE")], 1.0, False, Slo())
    assert empty.no_gap_share is None and empty.worst_gap_ms["p50"] is None
    assert "worst gap ms" in table(RunResult(server={}, mode="concurrency", settings={}, slo=Slo(), steps=[step]))
