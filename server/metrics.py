"""Prometheus metrics, named after vLLM's where they mean the same thing. Torch-free.

Each server has its own registry (tests run several servers in one process). Load gauges
are read from the engine when scraped; step and frame counters come from the engine's step
observer; latency histograms and finish reasons come from the servicer, which sees every
request end (a caller that goes away counts as cancelled).
"""

from __future__ import annotations

from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from csm_core.constants import FRAME_MS
from server.engine.types import EngineStats, FinishReason, StepStats

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
_STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats]):
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("csm:num_requests_running", "Slots in use: a request prefilling or decoding, or a conversation "
              "between its turns.",
              registry=r).set_function(lambda: stats().slots_in_use)
        Gauge("csm:num_requests_waiting", "Requests waiting for a slot.",
              registry=r).set_function(lambda: stats().requests_waiting)
        Gauge("csm:slot_usage_perc", "Fraction of slots in use, 0 to 1 (like vllm:kv_cache_usage_perc).",
              registry=r).set_function(lambda: _usage(stats()))
        self.time_to_first_audio = Histogram(
            "csm:time_to_first_audio_seconds", "Arrival of a request to its first audio chunk leaving.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_chunk_latency = Histogram(
            "csm:inter_chunk_latency_seconds", "Time between consecutive audio chunks of a stream.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.step_duration = Histogram(
            "csm:engine_step_duration_seconds", "Duration of one engine step (all slots).",
            buckets=_STEP_BUCKETS, registry=r)
        self.frames_generated = Counter(
            "csm:frames_generated", "80 ms audio frames generated.", registry=r)
        self.audio_seconds_generated = Counter(
            "csm:audio_seconds_generated", "Seconds of audio generated.", registry=r)
        self.request_success = Counter(
            "csm:request_success", "Requests ended, by finish reason (eos, length, cancelled, error).",
            ["finished_reason"], registry=r)
        self.grpc_requests = Counter(
            "csm:grpc_requests", "gRPC calls handled, by method and final status code.",
            ["method", "code"], registry=r)
        r.register(_ConversationCollector(stats))

    def observe_step(self, step: StepStats) -> None:
        """Engine step observer (called on the engine thread)."""
        self.step_duration.observe(step.duration_s)
        if step.frames:
            self.frames_generated.inc(step.frames)
            self.audio_seconds_generated.inc(step.frames * FRAME_MS / 1000)

    def observe_finished(self, reason: FinishReason) -> None:
        self.request_success.labels(finished_reason=reason.value).inc()

    def observe_rpc(self, method: str, code: grpc.StatusCode) -> None:
        self.grpc_requests.labels(method=method, code=code.name).inc()


class _ConversationCollector:
    """Conversations and the prefix cache, read from the engine's snapshot when scraped."""

    def __init__(self, stats: Callable[[], EngineStats]):
        self._stats = stats

    def collect(self):
        s = self._stats()
        yield GaugeMetricFamily("csm:conversations", "Open conversations (Converse calls).", value=s.conversations)
        yield GaugeMetricFamily("csm:conversations_holding_slots", "Conversations holding a slot between turns.",
                                value=s.conversations_holding_slots)
        p = s.prefix_cache
        if p is None:
            return
        yield CounterMetricFamily("csm:prefix_cache_hits", "Admitted prompts that found cached prefix blocks.",
                                  value=p.hits)
        yield CounterMetricFamily("csm:prefix_cache_misses", "Admitted prompts with whole chunks that found none.",
                                  value=p.misses)
        yield CounterMetricFamily("csm:prefix_cache_hit_positions", "Prompt positions copied instead of prefilled.",
                                  value=p.hit_positions)
        yield CounterMetricFamily("csm:prefix_cache_evictions", "Prefix blocks evicted (least recently used).",
                                  value=p.evictions)
        yield GaugeMetricFamily("csm:prefix_cache_bytes", "Bytes of KV rows the prefix cache holds.",
                                value=p.bytes_used)
        yield GaugeMetricFamily("csm:prefix_cache_capacity_bytes", "The prefix cache's budget (--prefix-cache-mb), "
                                "in whole blocks.", value=p.capacity_bytes)


def _usage(stats: EngineStats) -> float:
    return stats.slots_in_use / stats.max_slots if stats.max_slots else 0.0


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serves /metrics over HTTP on a daemon thread; port 0 picks a free port (`server_port`)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
