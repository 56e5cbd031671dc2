"""Prometheus metrics, named after vLLM's where they mean the same thing. Torch-free.

Each server has its own registry (tests run several servers in one process). Every csm:
series carries the `model_name` label (the served model name, as vLLM's do). Load gauges are
read from the engine when scraped; step and frame counters come from the engine's step
observer; latency histograms and finish reasons come from server/front/delivery.py, which sees
every response end on every transport (a caller that goes away counts as cancelled); calls
are counted per transport: gRPC by method and status code, HTTP by route and status.
The process_* series (CPU, memory, file descriptors) come from prometheus_client.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_asgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from csm_core.constants import FRAME_MS
from server.engine.types import EngineStats, FinishReason, StepStats
from server.front.engine_client import Summary

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
_REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
_STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
_PROMPT_BUCKETS = (8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats], model_name: str = ""):
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        model = {"model_name": model_name}

        def gauge(name: str, doc: str, read: Callable[[EngineStats], float]) -> None:
            Gauge(name, doc, ["model_name"], registry=r).labels(**model).set_function(lambda: read(stats()))

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, ["model_name"], buckets=buckets, registry=r).labels(**model)

        gauge("csm:num_requests_running", "Slots in use: a request prefilling or decoding, or a conversation "
              "between its turns.", lambda s: s.slots_in_use)
        gauge("csm:num_requests_waiting", "Requests waiting for a slot.", lambda s: s.requests_waiting)
        gauge("csm:num_requests_paused", "Requests paused because their client has too much audio unread.",
              lambda s: s.requests_paused)
        gauge("csm:num_requests_preempted", "Paused requests that gave their slot back (their KV in host memory).",
              lambda s: s.requests_preempted)
        gauge("csm:slot_usage_perc", "Fraction of slots in use, 0 to 1 (like vllm:kv_cache_usage_perc).", _usage)
        self.time_to_first_audio = histogram(
            "csm:time_to_first_audio_seconds", "Arrival of a request to its first audio chunk leaving.",
            _LATENCY_BUCKETS)
        self.inter_chunk_latency = histogram(
            "csm:inter_chunk_latency_seconds", "Time between consecutive audio chunks of a stream.",
            _LATENCY_BUCKETS)
        self.queue_time = histogram(
            "csm:request_queue_time_seconds", "Arrival of a request to its admission into a slot.",
            _REQUEST_BUCKETS)
        self.e2e_latency = histogram(
            "csm:e2e_request_latency_seconds", "Arrival of a request to its last byte leaving.", _REQUEST_BUCKETS)
        self.real_time_factor = histogram(
            "csm:request_real_time_factor",
            "End-to-end time of a request / seconds of audio it produced (below 1: faster than real time).",
            _RTF_BUCKETS)
        self.prompt_positions = histogram(
            "csm:request_prompt_positions",
            "Backbone positions of a request's prompt (context segments and text; like vllm:request_prompt_tokens).",
            _PROMPT_BUCKETS)
        self.step_duration = histogram(
            "csm:engine_step_duration_seconds", "Duration of one engine step (all slots).", _STEP_BUCKETS)
        self.frames_generated = Counter(
            "csm:frames_generated", "80 ms audio frames generated.", ["model_name"], registry=r).labels(**model)
        self.audio_seconds_generated = Counter(
            "csm:audio_seconds_generated", "Seconds of audio generated.", ["model_name"],
            registry=r).labels(**model)
        self.prompt_positions_total = Counter(
            "csm:prompt_positions", "Prompt positions of finished requests (like vllm:prompt_tokens).",
            ["model_name"], registry=r).labels(**model)
        self._request_success = Counter(
            "csm:request_success", "Requests ended, by finish reason (eos, length, cancelled, error).",
            ["model_name", "finished_reason"], registry=r)
        self._grpc_requests = Counter(
            "csm:grpc_requests", "gRPC calls handled, by method and final status code.",
            ["model_name", "method", "code"], registry=r)
        self._http_requests = Counter(
            "csm:http_requests", "HTTP requests handled, by route and status code.",
            ["model_name", "route", "status"], registry=r)
        self._model = model
        r.register(_ConversationCollector(stats, model_name))

    def observe_step(self, step: StepStats) -> None:
        """Engine step observer (called on the engine thread)."""
        self.step_duration.observe(step.duration_s)
        if step.frames:
            self.frames_generated.inc(step.frames)
            self.audio_seconds_generated.inc(step.frames * FRAME_MS / 1000)

    def observe_finished(self, reason: FinishReason) -> None:
        self._request_success.labels(**self._model, finished_reason=reason.value).inc()

    def observe_request(self, summary: Summary) -> None:
        """A response that ended (any reason) once its last byte has left (server/front/delivery.py)."""
        self.observe_finished(summary.reason)
        self.queue_time.observe(summary.queue_s)
        self.e2e_latency.observe(summary.total_s)
        if summary.audio_s > 0:
            self.real_time_factor.observe(summary.total_s / summary.audio_s)
        self.prompt_positions.observe(summary.prompt_frames)
        self.prompt_positions_total.inc(summary.prompt_frames)

    def observe_rpc(self, method: str, code: grpc.StatusCode) -> None:
        self._grpc_requests.labels(**self._model, method=method, code=code.name).inc()

    def observe_http(self, route: str, status: int) -> None:
        self._http_requests.labels(**self._model, route=route, status=str(status)).inc()

    def asgi_app(self):
        """The /metrics endpoint as an ASGI app (served by server/app.py on the metrics port)."""
        return make_asgi_app(self.registry)


class _ConversationCollector:
    """Preemptions, conversations and the prefix cache, read from the engine's snapshot when scraped."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str):
        self._stats = stats
        self._model_name = model_name

    def _family(self, kind, name: str, doc: str, value: float):
        family = kind(name, doc, labels=["model_name"])
        family.add_metric([self._model_name], value)
        return family

    def collect(self):
        s = self._stats()
        g, c = GaugeMetricFamily, CounterMetricFamily
        yield self._family(c, "csm:num_preemptions", "Paused requests that gave their slot to a waiting one "
                                                     "(like vllm:num_preemptions).", s.preemptions)
        yield self._family(c, "csm:num_resumes", "Preempted requests that took a slot again.", s.resumes)
        yield self._family(g, "csm:conversations", "Open conversations (Converse calls).", s.conversations)
        yield self._family(g, "csm:conversations_holding_slots", "Conversations holding a slot between turns.",
                           s.conversations_holding_slots)
        p = s.prefix_cache
        if p is None:
            return
        yield self._family(c, "csm:prefix_cache_hits", "Admitted prompts that found cached prefix blocks.", p.hits)
        yield self._family(c, "csm:prefix_cache_misses", "Admitted prompts with whole chunks that found none.",
                           p.misses)
        yield self._family(c, "csm:prefix_cache_hit_positions", "Prompt positions copied instead of prefilled.",
                           p.hit_positions)
        yield self._family(c, "csm:prefix_cache_evictions", "Prefix blocks evicted (least recently used).",
                           p.evictions)
        yield self._family(g, "csm:prefix_cache_bytes", "Bytes of KV rows the prefix cache holds.", p.bytes_used)
        yield self._family(g, "csm:prefix_cache_capacity_bytes",
                           "The prefix cache's budget (--prefix-cache-mb), in whole blocks.", p.capacity_bytes)


def _usage(stats: EngineStats) -> float:
    return stats.slots_in_use / stats.max_slots if stats.max_slots else 0.0
