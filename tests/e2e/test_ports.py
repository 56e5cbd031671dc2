"""Ports: a taken gRPC, HTTP or metrics port stops csm-serve before the model loads, with a message
that names the flag; gRPC binds without SO_REUSEPORT, so two servers never share a port."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from server.app import ServerConfig, SpeechServer
from server.listeners import Listeners, PortUnavailable

from .harness import free_port
from .test_cli_drain import csm_serve


def run_csm_serve(**env) -> tuple[int, str, float]:
    start = time.monotonic()
    done = subprocess.run([csm_serve()], capture_output=True, text=True, timeout=120, env={
        **os.environ, "CSM_MODEL": "tiny", "CSM_DEVICE": "cpu", "CSM_HOST": "127.0.0.1", "CSM_WATERMARK": "false",
        "CSM_PORT": str(free_port()), "CSM_HTTP_PORT": str(free_port()), "CSM_METRICS_PORT": str(free_port()),
        **env})
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


@pytest.fixture()
def taken_port():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("variable", "flag"), [
    ("CSM_PORT", "--port"), ("CSM_HTTP_PORT", "--http-port"), ("CSM_METRICS_PORT", "--metrics-port")])
def test_a_taken_port_stops_csm_serve_before_the_model_loads(taken_port, variable, flag):
    code, output, _ = run_csm_serve(**{variable: str(taken_port)})
    assert code == 1, output
    assert f"127.0.0.1:{taken_port} for {flag}" in output and "already in use" in output, output
    assert "SO_REUSEPORT is off" in output and f"Choose another {flag}" in output
    assert "loading model" not in output and "Traceback" not in output, output


def test_a_second_server_on_a_live_grpc_port_fails_instead_of_sharing_it(server, engine):
    # csm-serve itself refuses before loading anything:
    code, output, _ = run_csm_serve(CSM_PORT=str(server.server.port))
    assert code == 1 and f"for --port (CSM_PORT)" in output, output
    # and gRPC's own bind refuses too (no SO_REUSEPORT), with the same message:
    config = ServerConfig(host="127.0.0.1", port=server.server.port, http_port=None, metrics_port=None)
    second = SpeechServer(engine, config, listeners=Listeners())
    with pytest.raises(PortUnavailable, match="already in use"):
        server.run(second.start())
    server.run(second.stop(0))
