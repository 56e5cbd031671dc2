"""The grpc.aio server around one engine: csm.v1.Speech and csm.v1.Voices, health, reflection, auth,
TLS, metrics, drain.

Lifecycle: `start()` binds the ports with health NOT_SERVING and turns it SERVING once the
engine has warmed up. `drain()` is the SIGTERM path: health goes NOT_SERVING, new calls get
UNAVAILABLE, in-flight streams get up to `drain_grace_s` to finish, then the server stops.
The engine's own lifetime (start, shutdown) belongs to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from csm_wire import speech_pb2, speech_pb2_grpc, voices_pb2, voices_pb2_grpc
from server.auth import BearerTokenInterceptor
from server.engine.types import StepStats
from server.errors import StatusInterceptor
from server.metrics import Metrics, serve_metrics
from server.servicer import EngineClient, SpeechServicer
from server.voices.registry import VoiceRegistry
from server.voices.servicer import VoicesServicer

log = logging.getLogger(__name__)

SPEECH_SERVICE = speech_pb2.DESCRIPTOR.services_by_name["Speech"].full_name  # "csm.v1.Speech"
VOICES_SERVICE = voices_pb2.DESCRIPTOR.services_by_name["Voices"].full_name  # "csm.v1.Voices"
HEALTH_SERVICES = ("", SPEECH_SERVICE)
# After the engine has finished its in-flight requests, the time the last messages get to leave.
FINAL_MESSAGES_GRACE_S = 5.0
READY_POLL_S = 0.1


class ServedEngine(EngineClient, Protocol):
    """What the server (and csm-serve) need from server.engine.engine.Engine beyond the servicer's part."""

    def add_step_observer(self, fn: Callable[[StepStats], None]) -> None: ...
    def add_fatal_observer(self, fn: Callable[[BaseException], None]) -> None: ...
    def drain(self, grace_s: float) -> bool: ...
    def shutdown(self) -> None: ...


@dataclass(slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 50051  # 0: any free port (see SpeechServer.port)
    metrics_port: int | None = 9090  # None: no metrics endpoint; 0: any free port
    tls_cert: str | None = None  # PEM files; cert and key together turn TLS on
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM; set: clients must present a certificate it signed (mTLS)
    auth_tokens: tuple[str, ...] = ()  # empty: no authentication
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int = 256  # calls at once, health checks included; more get RESOURCE_EXHAUSTED
    drain_grace_s: float = 30.0

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mTLS) needs TLS: set --tls-cert and --tls-key too")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"--{name.replace('_', '-')} {path!r} is not a readable file")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics port {self.metrics_port} is outside 0..65535")
        if self.max_message_bytes < 1024 * 1024:
            raise ValueError("--max-message-bytes below 1 MiB would reject ordinary requests")
        if self.max_concurrent_rpcs < 1:
            raise ValueError("--max-concurrent-rpcs must be >= 1")
        if self.drain_grace_s < 0:
            raise ValueError("--drain-grace-s must be >= 0")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls_cert:
            return None
        client_ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


class SpeechServer:
    def __init__(self, engine: ServedEngine, config: ServerConfig, voices: VoiceRegistry | None = None):
        """`voices`: the voice registry behind csm.v1.Voices and SynthesizeRequest.voice; None
        serves no voices (Voices answers UNIMPLEMENTED, a named voice NOT_FOUND)."""
        self._engine = engine
        self.config = config
        self.metrics = Metrics(engine.stats)
        engine.add_step_observer(self.metrics.observe_step)
        self._servicer = SpeechServicer(engine, self.metrics, voices)
        self._voices = voices
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._metrics_http = None
        self._ready_task: asyncio.Task | None = None
        self.engine_failed = asyncio.Event()  # set when the engine thread stopped on an error
        self.port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        cfg = self.config
        interceptors: list[grpc.aio.ServerInterceptor] = [StatusInterceptor(self.metrics.observe_rpc)]
        if cfg.auth_tokens:
            interceptors.append(BearerTokenInterceptor(cfg.auth_tokens))
        self._server = grpc.aio.server(
            interceptors=interceptors,
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
            ],
        )
        speech_pb2_grpc.add_SpeechServicer_to_server(self._servicer, self._server)
        services = [SPEECH_SERVICE]
        if self._voices is not None:
            voices_pb2_grpc.add_VoicesServicer_to_server(VoicesServicer(self._voices), self._server)
            services.append(VOICES_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection((*services, "grpc.health.v1.Health", reflection.SERVICE_NAME),
                                            self._server)
        address = f"{cfg.host}:{cfg.port}"
        credentials = cfg.server_credentials()
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        await self._server.start()
        if cfg.metrics_port is not None:
            self._metrics_http = serve_metrics(self.metrics.registry, cfg.host, cfg.metrics_port)
            self.metrics_port = self._metrics_http.server_port
        log.info(
            "csm.v1 listening on %s:%d (%s%s)%s", cfg.host, self.port, "TLS" if credentials else "plaintext",
            ", client certificates required" if cfg.tls_client_ca else "",
            f"; metrics on http://{cfg.host}:{self.metrics_port}/metrics" if self.metrics_port else "")
        self._ready_task = asyncio.create_task(self._serve_when_ready())
        loop = asyncio.get_running_loop()
        self._engine.add_fatal_observer(lambda exc: loop.call_soon_threadsafe(self._engine_stopped))

    def _engine_stopped(self) -> None:
        """The engine thread died: health NOT_SERVING at once (the caller then exits)."""
        if self._ready_task is not None:
            self._ready_task.cancel()
        for service in HEALTH_SERVICES:
            asyncio.ensure_future(self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING))
        self.engine_failed.set()

    async def _serve_when_ready(self) -> None:
        while not self._engine.ready:
            await asyncio.sleep(READY_POLL_S)
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("engine warmed up: health SERVING")

    async def drain(self) -> bool:
        """SIGTERM path. True when every in-flight stream finished within the grace."""
        grace = self.config.drain_grace_s
        log.info("draining: health NOT_SERVING, new calls UNAVAILABLE, in-flight streams get %.0f s", grace)
        self._servicer.stop_accepting()
        await self._health.enter_graceful_shutdown()
        finished = await asyncio.to_thread(self._engine.drain, grace)
        if not finished:
            log.warning("drain grace of %.0f s passed with requests still running: they are cancelled", grace)
        await self.stop(FINAL_MESSAGES_GRACE_S if finished else 0.0)
        return finished

    async def stop(self, grace: float | None = None) -> None:
        """Stops serving; calls still running after `grace` seconds are cancelled."""
        if self._ready_task is not None:
            self._ready_task.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
