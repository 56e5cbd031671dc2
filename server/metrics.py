"""Prometheus metrics, named after vLLM's where they mean the same thing. Torch-free.

Each server has its own registry (tests run several servers in one process). Every csm:
series carries the `model_name` label (the served model name, as vLLM's do). Load gauges are
read from the engine when scraped; step and frame counters come from the engine's step
observer, per-request engine times (prefill, decode, the length asked for) from its request
observer; latency histograms, the output's length, each stream's worst playback gap
(csm_core/continuity.py) and finish reasons come from server/front/delivery.py, which sees
every response end on every transport (a caller that goes away counts as cancelled); calls
are counted per transport: gRPC by method and status code, HTTP by route and status (with
their duration). csm:model_config_info (always 1) labels the model, dtype, device, slots,
watermark and version, as vllm:cache_config_info does the cache's settings.
The process_* series (CPU, memory, file descriptors) come from prometheus_client.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

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
from server.engine.types import EngineInfo, EngineStats, FinishReason, RequestTimes, StepStats
from server.front.engine_client import Summary

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
_REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
_STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
_PROMPT_BUCKETS = (8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)
_BATCH_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
_ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)  # as vllm:iteration_tokens_total
_GAP_BUCKETS = (0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats], model_name: str = "", info: EngineInfo | None = None):
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
        self.step_batch_size = histogram(
            "csm:engine_step_batch_size", "Slots that produced a frame in one engine step.", _BATCH_BUCKETS)
        self.iteration_tokens = histogram(
            "csm:iteration_tokens_total", "Backbone positions computed in one engine step: prompt positions "
            "prefilled plus frames decoded (like vllm:iteration_tokens_total).", _ITERATION_BUCKETS)
        self.prefill_time = histogram(
            "csm:request_prefill_time_seconds", "A request's admission into a slot to its first frame "
            "(like vllm:request_prefill_time_seconds).", _REQUEST_BUCKETS)
        self.decode_time = histogram(
            "csm:request_decode_time_seconds", "A request's first frame to its end, pauses included "
            "(like vllm:request_decode_time_seconds).", _REQUEST_BUCKETS)
        self.max_audio = histogram(
            "csm:request_params_max_audio_seconds", "The length limit of a request: its max_audio_ms, or the "
            "default it got (like vllm:request_params_max_tokens).", _REQUEST_BUCKETS)
        self.audio_length = histogram(
            "csm:request_audio_seconds", "Seconds of audio a response carried (like vllm:request_generation_tokens).",
            _REQUEST_BUCKETS)
        self.worst_gap = histogram(
            "csm:stream_worst_gap_seconds", "Playback continuity of a response: the longest a player started at its "
            "first audio chunk and playing in real time would have waited for audio, at the hand-off to the "
            "transport (0: never).", _GAP_BUCKETS)
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
        self._http_duration = Histogram(
            "csm:http_request_duration_seconds", "HTTP requests, arrival to the response's last byte, by route "
            "and status code.", ["model_name", "route", "status"], buckets=_REQUEST_BUCKETS, registry=r)
        self._model = model
        if info is not None:
            config = Gauge("csm:model_config_info", "The served model and engine settings, in labels (always 1; "
                           "like vllm:cache_config_info).", list(_config_labels(info)), registry=r)
            config.labels(**{**_config_labels(info), **model}).set(1)
        r.register(_ConversationCollector(stats, model_name))

    def observe_step(self, step: StepStats) -> None:
        """Engine step observer (called on the engine thread)."""
        self.step_duration.observe(step.duration_s)
        self.step_batch_size.observe(step.decoding)
        self.iteration_tokens.observe(step.prefill_tokens + step.decoding)
        if step.frames:
            self.frames_generated.inc(step.frames)
            self.audio_seconds_generated.inc(step.frames * FRAME_MS / 1000)

    def observe_times(self, times: RequestTimes) -> None:
        """Engine request observer (called on the engine thread when a request ends)."""
        if times.prefill_s is not None:
            self.prefill_time.observe(times.prefill_s)
        if times.decode_s is not None:
            self.decode_time.observe(times.decode_s)
        if times.max_frames > 0:
            self.max_audio.observe(times.max_frames * FRAME_MS / 1000)

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
        self.audio_length.observe(summary.audio_s)

    def observe_playback(self, worst_gap_s: float) -> None:
        """A response's worst gap (csm_core/continuity.py), once it has ended, if it had audio."""
        self.worst_gap.observe(worst_gap_s)

    def observe_rpc(self, method: str, code: grpc.StatusCode) -> None:
        self._grpc_requests.labels(**self._model, method=method, code=code.name).inc()

    def observe_http(self, route: str, status: int, duration_s: float | None = None) -> None:
        self._http_requests.labels(**self._model, route=route, status=str(status)).inc()
        if duration_s is not None:
            self._http_duration.labels(**self._model, route=route, status=str(status)).observe(duration_s)

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
        yield self._family(c, "csm:prefix_cache_queries", "Admitted prompts with whole chunks, looked up in the "
                                                          "prefix cache (hits + misses).", p.lookups)
        yield self._family(c, "csm:prefix_cache_query_positions",
                           "Prompt positions looked up, in whole chunks (like vllm:prefix_cache_queries).",
                           p.query_positions)
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


def _config_labels(info: EngineInfo) -> dict[str, str]:
    return {"model_name": "", "model_source": info.model_source, "preset": info.preset,
            "random_weights": str(info.random_weights).lower(), "dtype": info.dtype, "device": info.device,
            "max_slots": str(info.limits.max_slots), "max_seq_len": str(info.limits.max_seq_len),
            "watermark": "on" if info.watermark_enabled else "off", "version": _version()}


def _version() -> str:
    try:
        return version("csm-serve")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _usage(stats: EngineStats) -> float:
    return stats.slots_in_use / stats.max_slots if stats.max_slots else 0.0
