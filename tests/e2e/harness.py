"""A real csm.v1 server on 127.0.0.1, in this process, on its own event loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import ssl
import threading
import time
import urllib.request

import grpc

from prometheus_client.parser import text_string_to_metric_families

from server.app import ServerConfig, SpeechServer


class LoopbackServer:
    def __init__(self, engine, voices=None, **config):
        """`voices`: a VoiceRegistry to serve csm.v1.Voices with (None: no voices)."""
        self._engine = engine
        self._voices = voices
        self._config = ServerConfig(**{"host": "127.0.0.1", "port": 0, "http_port": 0, "metrics_port": 0, **config})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-grpc", daemon=True)
        self.server: SpeechServer | None = None

    def start(self) -> LoopbackServer:
        self._thread.start()
        self.server = self.run(self._start())
        return self

    async def _start(self) -> SpeechServer:
        server = SpeechServer(self._engine, self._config, self._voices)
        await server.start()
        return server

    def run(self, coro, timeout: float = 60.0):
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def run_in_background(self, coro) -> concurrent.futures.Future:
        """Starts a coroutine on the server's loop; the future holds its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def metrics(self, context: ssl.SSLContext | None = None) -> dict[str, float]:
        """Every sample of /metrics: 'name{label="v",...}' (labels sorted) -> value. Every csm:
        series must carry the served model's name; it is checked here and left out of the keys.
        Over TLS when the server has it (`context`: the client's; None trusts any server
        certificate), with the server's first token when /metrics needs one."""
        config = self._config
        scheme = "https" if config.tls_cert else "http"
        if config.tls_cert and context is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{self.server.metrics_port}/metrics")
        if config.auth_tokens and config.metrics_auth == "token":
            request.add_header("authorization", f"Bearer {config.auth_tokens[0]}")
        text = urllib.request.urlopen(request, timeout=10, context=context).read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = dict(s.labels)
                if s.name.startswith("csm:"):
                    assert labels.pop("model_name", None) == self.server.model_names[0], s
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def stop(self) -> None:
        if self.server is not None:
            self.run(self.server.stop(0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Polls `predicate` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def long_audio_ms(info) -> int:
    """A max_audio_ms that keeps a short prompt generating for many seconds on CPU."""
    return min(info.max_audio_ms, (info.max_seq_len - 100) * 80, 60_000)


def drain_quietly(stream) -> None:
    """Reads a stream to its end, whatever status it ends with."""
    try:
        for _ in stream:
            pass
    except grpc.RpcError:
        pass
