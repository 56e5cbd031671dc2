"""The metric families vLLM users chart, scraped from a real server's /metrics after real calls:
per-request prefill and decode time, the length asked for and the length produced, batch size
and positions per step, preemptions, the prefix cache's queries, HTTP durations, the model's
config, and each stream's worst playback gap."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import wait_for

MAX_AUDIO_MS = 400  # 5 frames


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


def test_request_step_and_stream_families_move_with_plausible_values(server, client):
    before = server.metrics()
    call = client.stream("Measure me, please.", seed=11, max_audio_ms=MAX_AUDIO_MS, timeout=120)
    chunks = list(call)
    audio_s = sum(c.duration_ms for c in chunks) / 1000
    assert chunks and audio_s > 0

    def recorded():
        now = server.metrics()
        done = (delta(now, before, "csm:stream_worst_gap_seconds_count") >= 1
                and delta(now, before, "csm:request_decode_time_seconds_count") >= 1)
        return now if done else None

    after = wait_for(recorded, what="the request's end in the metrics")
    e2e = delta(after, before, "csm:e2e_request_latency_seconds_sum")

    # Engine times: a slot to the first frame, then the first frame to the end; both within the call.
    assert delta(after, before, "csm:request_prefill_time_seconds_count") == 1
    prefill = delta(after, before, "csm:request_prefill_time_seconds_sum")
    decode = delta(after, before, "csm:request_decode_time_seconds_sum")
    assert 0 < prefill < e2e and 0 <= decode < e2e and prefill + decode <= e2e

    # The length asked for (max_audio_ms) and the length produced.
    assert delta(after, before, "csm:request_params_max_audio_seconds_count") == 1
    assert delta(after, before, "csm:request_params_max_audio_seconds_sum") == pytest.approx(MAX_AUDIO_MS / 1000)
    assert delta(after, before, "csm:request_audio_seconds_count") == 1
    assert delta(after, before, "csm:request_audio_seconds_sum") == pytest.approx(audio_s, abs=1e-3)

    # Steps: batch size (at most the slots) and positions per step (like vllm:iteration_tokens_total).
    steps = delta(after, before, "csm:engine_step_batch_size_count")
    assert steps >= call.result.frames and steps == delta(after, before, "csm:engine_step_duration_seconds_count")
    batch = delta(after, before, "csm:engine_step_batch_size_sum")
    assert call.result.frames <= batch <= steps * 4  # the e2e engine has 4 slots
    assert delta(after, before, "csm:iteration_tokens_total_sum") >= batch  # plus the positions prefilled

    # Playback continuity: one worst gap for the stream, at least 0, no longer than the call.
    assert delta(after, before, "csm:stream_worst_gap_seconds_count") == 1
    assert 0 <= delta(after, before, "csm:stream_worst_gap_seconds_sum") < e2e
    assert after['csm:stream_worst_gap_seconds_bucket{le="+Inf"}'] == after["csm:stream_worst_gap_seconds_count"]

    # Engine counters read when scraped.
    assert "csm:num_preemptions_total" in after
    assert after["csm:prefix_cache_queries_total"] >= after["csm:prefix_cache_hits_total"]
    assert after["csm:prefix_cache_query_positions_total"] >= after["csm:prefix_cache_hit_positions_total"]


def test_model_config_info_labels_the_served_model(server, model_info):
    info = [(name, value) for name, value in server.metrics().items() if name.startswith("csm:model_config_info{")]
    assert len(info) == 1 and info[0][1] == 1
    labels = info[0][0]
    for expected in ('preset="tiny"', 'dtype="float32"', 'device="cpu"', 'max_slots="4"', 'watermark="off"',
                     'random_weights="true"', 'version="'):
        assert expected in labels, (expected, labels)


def test_http_request_duration_by_route_and_status(server):
    before = server.metrics()
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": "Time me.", "response_format": "pcm",
                       "max_audio_ms": 240, "seed": 3}).encode()
    request = urllib.request.Request(f"{server.http_url}/v1/audio/speech", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200 and response.read()
    count = 'csm:http_request_duration_seconds_count{route="/v1/audio/speech",status="200"}'
    total = 'csm:http_request_duration_seconds_sum{route="/v1/audio/speech",status="200"}'

    def recorded():
        now = server.metrics()
        return now if delta(now, before, count) >= 1 else None

    after = wait_for(recorded, what="the HTTP duration to be recorded")
    assert delta(after, before, count) == 1
    assert 0 < delta(after, before, total) < 60


def test_every_csm_family_is_in_the_docs_table(server):
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read()
    api = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    families = {f.name for f in text_string_to_metric_families(text.decode())
                if f.name.startswith("csm:") and not f.name.endswith("_created")}  # prometheus_client's timestamps
    assert "csm:stream_worst_gap_seconds" in families
    assert sorted(name for name in families if f"`{name}" not in api) == []
