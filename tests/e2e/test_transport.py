"""Transport security and connection hygiene of every port, with real clients on loopback:
TLS and mutual TLS on the HTTP API and /metrics as on gRPC, tokens on /metrics, the HTTP ports'
header timeout, keep-alive timeout and connection limit, ambiguous framing refused, Retry-After
on 503, and csm-serve holding up under 1,100 slowloris connections."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai import OpenAI

from csm_client import Connection, SpeechClient
from server.app import ServerConfig
from server.http_server import HttpLimits

from .conftest import start_tiny_engine
from .harness import LoopbackServer, drain_quietly, free_port, long_audio_ms, wait_for
from .test_auth_tls import TOKENS, certs  # noqa: F401 (fixture)
from .test_cli_drain import STARTUP_TIMEOUT_S, csm_serve, health_status

SPEECH = {"model": "tts-1", "voice": "0", "input": "Every port.", "response_format": "pcm"}
SPEECH_BODY = json.dumps({**SPEECH, "seed": 1, "max_audio_ms": 240}).encode()
REFUSED = (ssl.SSLError, OSError, http.client.HTTPException)  # OSError: resets, EOF mid-handshake


def tls_files(certs: Path, mutual: bool = False) -> dict:
    files = {"tls_cert": str(certs / "server.pem"), "tls_key": str(certs / "server.key")}
    return {**files, "tls_client_ca": str(certs / "ca.pem")} if mutual else files


@pytest.fixture(scope="module")
def tls_server(engine, certs):
    server = LoopbackServer(engine, auth_tokens=TOKENS, **tls_files(certs)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(engine, certs):
    server = LoopbackServer(engine, **tls_files(certs, mutual=True)).start()
    yield server
    server.stop()


def client_context(certs: Path, identity: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if identity:
        context.load_cert_chain(str(certs / f"{identity}.pem"), str(certs / f"{identity}.key"))
    return context


def fetch(url: str, context: ssl.SSLContext | None = None, token: str | None = None,
          body: bytes | None = None) -> tuple[int, bytes]:
    """Status and body of one request (urllib); an HTTP error status is returned, not raised."""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def plaintext(port: int, method: str = "GET", path: str = "/health", body: bytes | None = None) -> int:
    """The status of a plaintext HTTP/1.1 request (http.client); raises when the port refuses."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"content-type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def sdk(base_url: str, context: ssl.SSLContext | None, token: str = "not-needed") -> OpenAI:
    http_client = openai.DefaultHttpxClient(verify=context) if context is not None else None
    return OpenAI(base_url=f"{base_url}/v1", api_key=token, max_retries=0, timeout=60, http_client=http_client)


def test_tls_and_tokens_cover_the_http_api_and_metrics(tls_server, certs):
    api = f"https://127.0.0.1:{tls_server.server.http_port}"
    metrics = f"https://127.0.0.1:{tls_server.server.metrics_port}/metrics"
    context = client_context(certs)
    audio = sdk(api, context, TOKENS[0]).audio.speech.create(**SPEECH, extra_body={"seed": 1, "max_audio_ms": 240})
    assert len(audio.content) > 0
    with pytest.raises(openai.AuthenticationError):
        sdk(api, context, "wrong-secret").models.list()
    assert fetch(f"{api}/v1/models", context)[0] == 401
    assert fetch(f"{api}/health", context)[0] == 200  # open, like gRPC health

    status, text = fetch(metrics, context, TOKENS[1])
    assert status == 200 and b"csm:http_connections" in text
    assert fetch(metrics, context)[0] == 401
    assert fetch(metrics, context, "wrong-secret")[0] == 401
    for port in (tls_server.server.http_port, tls_server.server.metrics_port):
        with pytest.raises(REFUSED):
            plaintext(port)
        with pytest.raises(urllib.error.URLError) as untrusted:  # the server shows gRPC's certificate
            fetch(f"https://127.0.0.1:{port}/health", ssl.create_default_context(cafile=str(certs / "other-ca.pem")))
        assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)


def test_mtls_refuses_http_clients_without_a_certificate_the_ca_signed(mtls_server, certs):
    api = f"https://127.0.0.1:{mtls_server.server.http_port}"
    metrics = f"https://127.0.0.1:{mtls_server.server.metrics_port}/metrics"
    status, audio = fetch(f"{api}/v1/audio/speech", client_context(certs, "client"), body=SPEECH_BODY)
    assert status == 200 and len(audio) > 0
    assert fetch(metrics, client_context(certs, "client"))[0] == 200
    for url in (f"{api}/v1/audio/speech", metrics):
        for identity in (None, "stranger"):
            with pytest.raises(REFUSED):
                fetch(url, client_context(certs, identity), body=SPEECH_BODY if "speech" in url else None)
    with pytest.raises(REFUSED):  # the plaintext POST that used to get 200 and audio
        plaintext(mtls_server.server.http_port, "POST", "/v1/audio/speech", SPEECH_BODY)
    with pytest.raises(openai.APIConnectionError):
        sdk(api, client_context(certs)).audio.speech.create(**SPEECH)
    mutual = sdk(api, client_context(certs, "client")).audio.speech.create(**SPEECH, extra_body={"max_audio_ms": 240})
    assert len(mutual.content) > 0


@pytest.mark.parametrize("metrics_auth", ["token", "none"])
def test_metrics_need_a_token_unless_metrics_auth_is_none(engine, metrics_auth):
    server = LoopbackServer(engine, auth_tokens=TOKENS, metrics_auth=metrics_auth).start()
    try:
        metrics = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
        assert fetch(metrics)[0] == (401 if metrics_auth == "token" else 200)
        assert fetch(metrics, token=TOKENS[0])[0] == 200
        assert fetch(f"{server.http_url}/v1/models")[0] == 401  # the API keeps its tokens either way
    finally:
        server.stop()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float | None]:
    """What the server sends until it closes the connection, and the seconds that took (None:
    still open after `timeout`)."""
    start = time.monotonic()
    received = b""
    sock.settimeout(0.05)
    while time.monotonic() - start < timeout:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received, time.monotonic() - start
        if not data:
            return received, time.monotonic() - start
        received += data
    return received, None


@pytest.fixture(scope="module")
def limited_server(engine):
    limits = HttpLimits(header_timeout_s=1.0, keep_alive_s=0.5, max_connections=8)
    server = LoopbackServer(engine, http_limits=limits).start()
    yield server
    server.stop()


def test_headers_must_be_complete_within_the_header_timeout(limited_server):
    with socket.create_connection(("127.0.0.1", limited_server.server.http_port)) as slow:
        start = time.monotonic()
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for byte in b"X-Slow: ":  # a byte every 0.1 s, the last at 0.8 s: a timer they reset would end at 1.8 s
            time.sleep(0.1)
            slow.sendall(bytes([byte]))
        received, _ = read_until_closed(slow, 5)
        took = time.monotonic() - start
    assert received.startswith(b"HTTP/1.1 408 ") and 1.0 <= took < 1.7, (received, took)
    for port in (limited_server.server.http_port, limited_server.server.metrics_port):
        with socket.create_connection(("127.0.0.1", port)) as silent:
            received, took = read_until_closed(silent, 5)
        assert received == b"" and took is not None and 0.9 <= took < 2.5, took  # closed without a word


def test_a_tls_handshake_gets_the_header_timeout(engine, certs):
    server = LoopbackServer(engine, http_limits=HttpLimits(header_timeout_s=1.0), **tls_files(certs)).start()
    try:
        for port in (server.server.http_port, server.server.metrics_port):
            with socket.create_connection(("127.0.0.1", port)) as silent:  # no ClientHello
                received, took = read_until_closed(silent, 5)
            assert received == b"" and took is not None and 0.9 <= took < 2.5, took
    finally:
        server.stop()


def test_tls_files_that_do_not_load_are_named(certs):
    config = ServerConfig(tls_cert=str(certs / "server.key"), tls_key=str(certs / "server.key"))
    with pytest.raises(ValueError, match="--tls-cert"):
        config.ssl_context()


def test_idle_keep_alive_connections_are_closed(limited_server):
    connection = http.client.HTTPConnection("127.0.0.1", limited_server.server.http_port, timeout=5)
    try:
        for _ in range(3):  # each request on the kept connection gets its own header timeout
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b'{"status":"ok"}')
            time.sleep(0.4)  # idle, under the keep-alive timeout: 1.2 s on one connection in all
        sock = connection.sock
        received, idle = read_until_closed(sock, 5)
    finally:
        connection.close()
    assert received == b"" and idle is not None and idle < 0.6, idle


def open_connections(server: LoopbackServer, port: str) -> float:
    return server.metrics()[f'csm:http_connections{{port="{port}"}}']


def test_connections_beyond_the_limit_are_closed_at_once(limited_server):
    server = limited_server
    before = server.metrics()['csm:http_connections_closed_total{port="api",reason="limit"}']
    wait_for(lambda: open_connections(server, "api") == 0, what="earlier connections to close")
    held = [socket.create_connection(("127.0.0.1", server.server.http_port)) for _ in range(8)]
    try:
        wait_for(lambda: open_connections(server, "api") == 8, what="8 connections open")
        with socket.create_connection(("127.0.0.1", server.server.http_port)) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received, took = read_until_closed(extra, 5)
        assert received == b"" and took is not None and took < 0.5, (received, took)
        assert server.metrics()['csm:http_connections_closed_total{port="api",reason="limit"}'] == before + 1
        with grpc.insecure_channel(server.target) as channel:  # gRPC does not share the limit
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: open_connections(server, "api") == 0, what="the held connections to close")
    assert plaintext(server.server.http_port) == 200


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
])
def test_content_length_with_transfer_encoding_is_400_and_closed(server, headers):
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled  # a proxy reading Content-Length would forward this as one request
    with socket.create_connection(("127.0.0.1", server.server.http_port)) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n" + body)
        received, took = read_until_closed(sock, 5)
    assert received.startswith(b"HTTP/1.1 400 ") and b"connection: close" in received.lower(), received
    assert received.count(b"HTTP/1.1 ") == 1 and took is not None  # one answer, then the connection closes


def test_503_while_draining_carries_retry_after():
    engine = start_tiny_engine(max_slots=1, max_queue=2)
    server = LoopbackServer(engine, drain_grace_s=60).start()
    try:
        with SpeechClient(server.target) as grpc_client:
            running = grpc_client.stream("I keep the drain waiting.", seed=2, timeout=300,
                                         max_audio_ms=long_audio_ms(grpc_client.model_info(timeout=10)))
            next(iter(running))
            draining = server.run_in_background(server.server.drain())
            wait_for(lambda: fetch(f"{server.http_url}/ready")[0] == 503, what="/ready to say draining")
            with pytest.raises(openai.InternalServerError) as refused:
                sdk(server.http_url, None).audio.speech.create(**SPEECH)
            headers = refused.value.response.headers
            assert refused.value.status_code == 503
            assert headers["retry-after"] == "1" and headers["retry-after-ms"] == "1000"
            running.cancel()
            drain_quietly(running)
        assert draining.result(timeout=120) is True
    finally:
        server.stop()
        engine.shutdown()


# -- csm-serve under 1,100 slowloris connections ----------------------------------------------
SLOWLORIS = Path(__file__).with_name("slowloris.py")
ATTACKERS = 1100
SOFT_NOFILE = 1024  # a common default soft limit: 1,000 held connections alone would use it up


def serve_env(port: int, http_port: int, metrics_port: int) -> dict:
    return {**os.environ, "CSM_MODEL": "tiny", "CSM_DEVICE": "cpu", "CSM_DTYPE": "float32", "CSM_WATERMARK": "false",
            "CSM_HOST": "127.0.0.1", "CSM_PORT": str(port), "CSM_HTTP_PORT": str(http_port),
            "CSM_METRICS_PORT": str(metrics_port), "CSM_MAX_SLOTS": "2", "CSM_LOG_FORMAT": "json"}


def timed(fn) -> tuple[float, object]:
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def health_check(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="csm.v1.Speech"),
                                                         timeout=10).status


def short_synthesis(target: str) -> int:
    with SpeechClient(target) as client:
        call = client.stream("Still here.", seed=3, max_audio_ms=240, timeout=60)
        return sum(chunk.num_samples for chunk in call)


def scrape(metrics_port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in /metrics")


def test_csm_serve_answers_grpc_while_1100_slowloris_connections_are_held(tmp_path):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2 * ATTACKERS + 512:
        pytest.skip("the hard open-files limit is too low for this test")
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    log_path = tmp_path / "csm-serve.log"
    with open(log_path, "wb") as log:
        # bash sets the soft limit (a preexec_fn would run in a fork of this threaded process).
        process = subprocess.Popen(["bash", "-c", f'ulimit -Sn {SOFT_NOFILE} && exec "$0"', csm_serve()],
                                   env=serve_env(port, http_port, metrics_port), stdout=log, stderr=subprocess.STDOUT)
    attacker = None
    target = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: health_status(target) == health_pb2.HealthCheckResponse.SERVING or process.poll() is not None,
                 timeout=STARTUP_TIMEOUT_S, interval=0.5, what="csm-serve to report SERVING")
        assert process.poll() is None, log_path.read_text()
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        assert int(re.search(r"Max open files\s+(\d+)", limits).group(1)) > SOFT_NOFILE
        quiet = timed(lambda: health_check(target))[0], timed(lambda: short_synthesis(target))[0]

        attacker = subprocess.Popen([sys.executable, str(SLOWLORIS), str(http_port), str(ATTACKERS), "40"],
                                    stdout=subprocess.PIPE, text=True)
        opened = json.loads(attacker.stdout.readline())
        assert opened["opened"] == ATTACKERS
        held_at = time.monotonic()
        wait_for(lambda: sample(scrape(metrics_port), "csm:http_connections", port="api") == 1000, timeout=5,
                 what="1,000 connections held by the server")
        health_s, status = timed(lambda: health_check(target))
        synthesis_s, samples = timed(lambda: short_synthesis(target))
        assert status == health_pb2.HealthCheckResponse.SERVING and samples > 0
        with pytest.raises(REFUSED):
            plaintext(http_port)  # the port is full: closed at once
        assert time.monotonic() - held_at < 9, "the checks ran past the header timeout: they prove nothing"

        summary = json.loads(attacker.stdout.readline())
        attacker.wait(10)
        lived = summary["lived_s"]
        at_once = [s for s in lived if s < 2]
        timed_out = [s for s in lived if s >= 2]
        print(f"\nslowloris: {opened['opened']} connections opened in {opened['open_s']} s; "
              f"{len(at_once)} closed at once (limit), {len(timed_out)} closed by the header timeout after "
              f"{min(timed_out):.2f}-{max(timed_out):.2f} s ({summary['got_408']} with 408), "
              f"{summary['still_open']} still open")
        print(f"gRPC health check: {quiet[0] * 1000:.0f} ms quiet, {health_s * 1000:.0f} ms under attack; "
              f"Synthesize 240 ms of audio: {quiet[1] * 1000:.0f} ms quiet, {synthesis_s * 1000:.0f} ms under attack")
        assert summary["still_open"] == 0 and len(at_once) == ATTACKERS - 1000 and len(timed_out) == 1000
        assert 9.5 <= min(timed_out) and max(timed_out) < 15
        assert health_s < 1.0 and synthesis_s < max(5.0, 3 * quiet[1])

        text = scrape(metrics_port)
        refused = ATTACKERS - 1000 + 1  # and the test's own request while the port was full
        assert sample(text, "csm:http_connections_closed_total", port="api", reason="limit") == refused
        assert sample(text, "csm:http_connections_closed_total", port="api", reason="header_timeout") == 1000
        assert plaintext(http_port) == 200  # the port serves again
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.wait(10)
        if process.poll() is None:
            process.kill()
            process.wait(30)
    messages = [json.loads(line)["message"] for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(m.startswith(f"open files limit raised from {SOFT_NOFILE} to ") for m in messages), messages
