"""One engine behind three listeners on one event loop: the grpc.aio server (csm.v1.Speech,
csm.v1.Voices, health, reflection, auth, TLS), the OpenAI-compatible HTTP API
(server/http_api.py) and the Prometheus /metrics endpoint, both served by uvicorn through
server/http_server.py (connection limits, header timeout).

Every port has the same transport security: the TLS files (and the client CA of mutual TLS)
configure gRPC and both HTTP ports alike. Bearer tokens guard gRPC and the HTTP API, and
/metrics too unless `metrics_auth` is "none".

Lifecycle: `start()` binds the ports with health NOT_SERVING and turns it SERVING once the
engine has warmed up. `drain()` is the SIGTERM path: health (and HTTP /ready) goes
NOT_SERVING, new calls get UNAVAILABLE (HTTP 503), in-flight streams of both APIs get up to
`drain_grace_s` to finish, then the server stops. The engine's own lifetime (start,
shutdown) belongs to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from csm_wire import speech_pb2, speech_pb2_grpc, voices_pb2, voices_pb2_grpc
from server import reflection
from server.auth import BearerTokenInterceptor, BearerTokens
from server.engine.types import RequestTimes, StepStats
from server.converse.call import ConverseCall
from server.errors import StatusInterceptor, Unauthenticated, describe
from server.http_api import HttpApi, failure_response
from server.openai_voices import OpenAIVoices
from server.http_server import ConnectionCollector, HttpLimits, HttpServer
from server.listeners import Listeners, port_error
from server.metrics import Metrics
from server.openai_speech import OPENAI_TTS_MODELS
from server.front.door import FrontDoor
from server.front.engine_client import EngineClient
from server.servicer import SpeechServicer
from server.voices.registry import VoiceRegistry
from server.voices.create_queue import CreateQueue
from server.voices.servicer import VoicesServicer
from server.voices.tenants import TenantVoices

log = logging.getLogger(__name__)


class _ClientGoneIsNotAnError(logging.Filter):
    """gRPC logs a write that fails because the client went away mid-stream (it cancelled, its
    deadline passed, its connection dropped) as an ERROR from its core. The call is counted as
    the client saw it (server/errors.py); the event itself is ordinary, so it is logged at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.getMessage().startswith("ExecuteBatchError raised in core"):
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.INFO, "INFO", None, None
        return True


logging.getLogger("grpc._cython.cygrpc").addFilter(_ClientGoneIsNotAnError())

SPEECH_SERVICE = speech_pb2.DESCRIPTOR.services_by_name["Speech"].full_name  # "csm.v1.Speech"
VOICES_SERVICE = voices_pb2.DESCRIPTOR.services_by_name["Voices"].full_name  # "csm.v1.Voices"
HEALTH_SERVICES = ("", SPEECH_SERVICE)
# After the engine has finished its in-flight requests, the time the last messages get to leave.
FINAL_MESSAGES_GRACE_S = 5.0
READY_POLL_S = 0.1
METRICS_AUTH = ("token", "none")  # /metrics: the tokens of the API (when it has tokens), or open


class ServedEngine(EngineClient, Protocol):
    """What the server (and csm-serve) need from server.engine.engine.Engine beyond the servicer's part."""

    def add_step_observer(self, fn: Callable[[StepStats], None]) -> None: ...
    def add_request_observer(self, fn: Callable[[RequestTimes], None]) -> None: ...
    def add_fatal_observer(self, fn: Callable[[BaseException], None]) -> None: ...
    def drain(self, grace_s: float) -> bool: ...
    def shutdown(self) -> None: ...


@dataclass(slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 50051  # 0: any free port (see SpeechServer.port)
    http_port: int | None = 8000  # OpenAI-compatible HTTP API; None: off; 0: any free port
    metrics_port: int | None = 9090  # None: no metrics endpoint; 0: any free port
    # Model names the HTTP API answers to and lists; the first also labels the metrics.
    # Empty: the --model value, then OpenAI's speech model names (OPENAI_TTS_MODELS).
    served_model_names: tuple[str, ...] = ()
    tls_cert: str | None = None  # PEM files; cert and key together turn TLS on
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM; set: clients must present a certificate it signed (mTLS)
    auth_tokens: tuple[str, ...] = ()  # empty: no authentication
    metrics_auth: str = "token"  # with auth_tokens: /metrics needs a token too ("token") or not ("none")
    http_limits: HttpLimits = field(default_factory=HttpLimits)  # both HTTP ports
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
        for name, flag in (("port", "--port"), ("http_port", "--http-port"), ("metrics_port", "--metrics-port")):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{flag} {value} is outside 0..65535")
        if self.metrics_auth not in METRICS_AUTH:
            raise ValueError(f"--metrics-auth must be one of {', '.join(METRICS_AUTH)}, not {self.metrics_auth!r}")
        if any(not name.strip() for name in self.served_model_names):
            raise ValueError("--served-model-name: names must not be empty")
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

    def ssl_context(self) -> ssl.SSLContext | None:
        """The HTTP ports' TLS, from the files of server_credentials: TLS 1.2 or later, and with a
        client CA a certificate it signed is required, as gRPC requires it."""
        if not self.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
            if self.tls_client_ca:
                context.load_verify_locations(cafile=self.tls_client_ca)
        except ssl.SSLError as exc:
            raise ValueError(f"--tls-cert / --tls-key / --tls-client-ca do not load as PEM: {exc}") from exc
        if self.tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["http/1.1"])
        return context


class _MetricsTokenCheck:
    """/metrics behind the bearer tokens of the API (metrics_auth "token")."""

    def __init__(self, app, tokens: BearerTokens):
        self._app = app
        self._tokens = tokens

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            problem = self._tokens.problem(authorization)
            if problem is not None:
                await failure_response(describe(Unauthenticated(problem)))(scope, receive, send)
                return
        await self._app(scope, receive, send)


class SpeechServer:
    def __init__(self, engine: ServedEngine, config: ServerConfig, voices: VoiceRegistry | None = None,
                 listeners: Listeners | None = None):
        """`voices`: the voice registry behind csm.v1.Voices and SynthesizeRequest.voice; None
        serves no voices (Voices answers UNIMPLEMENTED, a named voice NOT_FOUND). `listeners`:
        sockets bound before the model loaded (csm-serve); None binds them at start."""
        self._engine = engine
        self.config = config
        self.model_names = config.served_model_names or (engine.info().model_source, *OPENAI_TTS_MODELS)
        self.metrics = Metrics(engine.stats, self.model_names[0], engine.info())
        engine.add_step_observer(self.metrics.observe_step)
        engine.add_request_observer(self.metrics.observe_times)
        tokens = BearerTokens(config.auth_tokens) if config.auth_tokens else None
        self._tokens = tokens
        self._door = FrontDoor(engine, voices, self.metrics)  # every transport's way in
        self._servicer = SpeechServicer(self._door, lambda requests, context: ConverseCall(self._door).run(
            requests, context))
        self._voices = voices
        # One tenant registry and one CreateVoice queue behind csm.v1.Voices and /v1/audio/voices.
        voice_tenants = TenantVoices(voices) if voices is not None else None
        voice_creates = CreateQueue(voices.limits.max_pending_creates) if voices is not None else None
        self._voices_servicer = VoicesServicer(voices, voice_tenants, voice_creates) if voices is not None else None
        self._http_api = HttpApi(self._door, self.model_names, tokens,
                                 OpenAIVoices(voice_tenants, voice_creates) if voices is not None else None)
        self._health = health.aio.HealthServicer()
        self._listeners = listeners
        self._server: grpc.aio.Server | None = None
        self._http_servers: dict[str, HttpServer] = {}  # by port: "api", "metrics"
        self._http_tasks: list[asyncio.Task] = []
        self.metrics.registry.register(ConnectionCollector(self._http_servers, self.model_names[0]))
        self._ready_task: asyncio.Task | None = None
        self.engine_failed = asyncio.Event()  # set when the engine thread stopped on an error
        self.port: int | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        cfg = self.config
        listeners = self._listeners or Listeners.claim(cfg.host, cfg.port, cfg.http_port, cfg.metrics_port)
        self._listeners = None
        try:
            tls = cfg.ssl_context()
        except ValueError:
            listeners.close()
            raise
        interceptors: list[grpc.aio.ServerInterceptor] = [StatusInterceptor(self.metrics.observe_rpc)]
        if self._tokens is not None:
            interceptors.append(BearerTokenInterceptor(self._tokens))
        self._server = grpc.aio.server(
            interceptors=interceptors,
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a second server on this port fails instead of sharing it
            ],
        )
        speech_pb2_grpc.add_SpeechServicer_to_server(self._servicer, self._server)
        services = [SPEECH_SERVICE]
        if self._voices is not None:
            voices_pb2_grpc.add_VoicesServicer_to_server(self._voices_servicer, self._server)
            services.append(VOICES_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable((*services, "grpc.health.v1.Health"), self._server)
        address = f"{cfg.host}:{cfg.port}"
        credentials = cfg.server_credentials()
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # gRPC reports a failed bind this way, without an errno
            listeners.close()
            raise port_error("port", cfg.host, cfg.port, OSError(str(exc))) from exc
        await self._server.start()
        if listeners.http is not None:
            self.http_port = self._serve_http("api", self._http_api.app, listeners.http, tls)
        if listeners.metrics is not None:
            metrics_app = self.metrics.asgi_app()
            if self._tokens is not None and cfg.metrics_auth == "token":
                metrics_app = _MetricsTokenCheck(metrics_app, self._tokens)
            self.metrics_port = self._serve_http("metrics", metrics_app, listeners.metrics, tls)
        scheme = "https" if tls else "http"
        limits = cfg.http_limits
        log.info(
            "csm.v1 listening on %s:%d (%s%s)%s%s%s", cfg.host, self.port, "TLS" if credentials else "plaintext",
            ", client certificates required" if cfg.tls_client_ca else "",
            f"; OpenAI-compatible HTTP API on {scheme}://{cfg.host}:{self.http_port}/v1 (models: "
            f"{', '.join(self.model_names)})" if self.http_port else "",
            f"; metrics on {scheme}://{cfg.host}:{self.metrics_port}/metrics"
            f"{' (bearer token required)' if self._tokens is not None and cfg.metrics_auth == 'token' else ''}"
            if self.metrics_port else "",
            f"; HTTP ports: at most {limits.max_connections} connections each, headers within "
            f"{limits.header_timeout_s:g} s, keep-alive {limits.keep_alive_s:g} s"
            if self.http_port or self.metrics_port else "")
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

    def _serve_http(self, port: str, app, sock: socket.socket, tls: ssl.SSLContext | None) -> int:
        what = {"api": "the HTTP API", "metrics": "metrics"}[port]
        server = HttpServer(app, sock, what, self.config.http_limits, tls, int(FINAL_MESSAGES_GRACE_S))
        self._http_servers[port] = server
        self._http_tasks.append(asyncio.create_task(server.serve(), name=f"uvicorn {what}"))
        return sock.getsockname()[1]

    async def _serve_when_ready(self) -> None:
        while not self._engine.ready:
            await asyncio.sleep(READY_POLL_S)
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("engine warmed up: health SERVING")

    async def drain(self) -> bool:
        """SIGTERM path. True when every in-flight stream finished within the grace."""
        grace = self.config.drain_grace_s
        log.info("draining: health NOT_SERVING, new calls UNAVAILABLE (HTTP 503), in-flight streams get %.0f s",
                 grace)
        self._door.stop_accepting()
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
        for server in self._http_servers.values():
            server.should_exit = True
            server.force_exit = not grace  # no grace: do not wait for open responses
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._http_tasks:
            try:
                await asyncio.wait_for(task, FINAL_MESSAGES_GRACE_S + 1)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
        for server in self._http_servers.values():
            server.sock.close()
        self._http_servers.clear()
        self._http_tasks.clear()
        if self._listeners is not None:
            self._listeners.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
