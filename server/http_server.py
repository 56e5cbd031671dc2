"""The HTTP ports (the OpenAI-compatible API and /metrics): uvicorn's HTTP/1.1 protocol with what
a port facing careless or hostile clients needs and uvicorn lacks.

- TLS from the same ServerConfig files as gRPC (server/app.py); with a client CA, a connection
  without a certificate that CA signed is refused during the handshake, as gRPC refuses it.
- A header timeout: a request's headers must be complete within `header_timeout_s` of the
  connection opening, or of the request's first byte after a keep-alive pause, or the client
  gets 408 and the connection is closed (one opened and left silent is closed without a word).
  Bytes trickling in do not extend it (slowloris). uvicorn itself times out only keep-alive.
  TLS handshakes get the same time.
- A bound on open connections per port: beyond `max_connections` a new connection is closed
  as soon as it is accepted, before anything is read, so that held connections cannot use up
  the file descriptors the process shares with gRPC.
- Ambiguous framing refused: a request with both Content-Length and Transfer-Encoding gets 400
  and the connection is closed. h11 would read the chunked body and ignore the length; a proxy
  in front that reads it the other way would let a second request hide in the body.

Counts of open and closed connections per port are exported as csm:http_connections and
csm:http_connections_closed (ConnectionCollector).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass

import h11
import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
REFUSAL_LOG_INTERVAL_S = 10.0  # a port at its connection limit says so at most this often


@dataclass(slots=True)
class HttpLimits:
    """Connection limits of each HTTP port (the API's and /metrics')."""

    header_timeout_s: float = 10.0  # connection (or keep-alive request) start -> headers complete
    keep_alive_s: float = 5.0  # an idle connection between requests is closed after this
    max_connections: int = 1000  # open connections per port; more are closed when accepted

    def __post_init__(self) -> None:
        if not self.header_timeout_s > 0:
            raise ValueError("--http-header-timeout-s must be > 0")
        if not self.keep_alive_s > 0:
            raise ValueError("--http-keep-alive-s must be > 0")
        if self.max_connections < 1:
            raise ValueError("--http-max-connections must be >= 1")


@dataclass(slots=True)
class ConnectionCounts:
    """What one port's connections came to: connections closed by the limit or the header timeout."""

    refused: int = 0
    header_timeouts: int = 0
    last_refusal_log: float = float("-inf")


class _StrictConnection(h11.Connection):
    """h11's server side, refusing a request that frames its body two ways."""

    def next_event(self):
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                # uvicorn answers a RemoteProtocolError with 400 and closes the connection.
                raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding: ambiguous framing")
        return event


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the connection limit, the header timeout and strict framing."""

    def __init__(self, config: uvicorn.Config, server_state, app_state: dict, limits: HttpLimits,
                 counts: ConnectionCounts, what: str, _loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(config, server_state, app_state, _loop)
        self.conn = _StrictConnection(h11.SERVER)
        self._limits = limits
        self._counts = counts
        self._what = what
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_begun = False  # bytes of the awaited request have arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._limits.max_connections:
            self._refused = True
            self._counts.refused += 1
            now = time.monotonic()
            if now - self._counts.last_refusal_log >= REFUSAL_LOG_INTERVAL_S:
                self._counts.last_refusal_log = now
                log.warning("%s: %d connections open, the most --http-max-connections allows: new connections "
                            "are closed (%d so far)", self._what, len(self.connections), self._counts.refused)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._request_begun = True
            if self._header_timer is None:  # the first byte after a keep-alive pause
                self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or the request failed)
            self._cancel_header_timer()
            self._request_begun = False

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self._limits.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self._counts.header_timeouts += 1
        if self._request_begun:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


class HttpServer(uvicorn.Server):
    """uvicorn serving one ASGI app on one bound socket, on the caller's event loop, through
    GuardedH11Protocol. Signals stay with csm-serve, which drains every API together (uvicorn
    would otherwise take SIGTERM and SIGINT for itself)."""

    def __init__(self, app, sock: socket.socket, what: str, limits: HttpLimits, tls: ssl.SSLContext | None,
                 graceful_shutdown_s: int):
        super().__init__(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, server_header=False,
                                        ws="none", timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]
                                        timeout_graceful_shutdown=graceful_shutdown_s))
        self.sock = sock
        self.what = what
        self.limits = limits
        self.tls = tls
        self.counts = ConnectionCounts()

    @property
    def open_connections(self) -> int:
        return len(self.server_state.connections)

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super().serve(sockets=[self.sock])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup for sockets handed in, with GuardedH11Protocol and the TLS handshake
        bounded by the header timeout (asyncio's default is 60 s)."""
        loop = asyncio.get_running_loop()

        def protocol() -> GuardedH11Protocol:
            return GuardedH11Protocol(self.config, self.server_state, self.lifespan.state, self.limits, self.counts,
                                      self.what, _loop=loop)

        handshake_s = self.limits.header_timeout_s if self.tls is not None else None
        self.servers = [await loop.create_server(protocol, sock=sock, ssl=self.tls, backlog=self.config.backlog,
                                                 ssl_handshake_timeout=handshake_s) for sock in sockets or ()]
        self.started = True


class ConnectionCollector:
    """csm:http_connections (open now) and csm:http_connections_closed (by the limit or the
    header timeout), per port: `api` or `metrics`."""

    def __init__(self, servers: dict[str, HttpServer], model_name: str):
        self._servers = servers
        self._model_name = model_name

    def collect(self) -> Iterable:
        open_now = GaugeMetricFamily("csm:http_connections", "Open connections of an HTTP port.",
                                     labels=["model_name", "port"])
        closed = CounterMetricFamily(
            "csm:http_connections_closed", "HTTP connections the server closed: `limit` (over "
            "--http-max-connections when accepted), `header_timeout` (headers not complete in time).",
            labels=["model_name", "port", "reason"])
        for port, server in self._servers.items():
            open_now.add_metric([self._model_name, port], server.open_connections)
            closed.add_metric([self._model_name, port, "limit"], server.counts.refused)
            closed.add_metric([self._model_name, port, "header_timeout"], server.counts.header_timeouts)
        yield open_now
        yield closed
