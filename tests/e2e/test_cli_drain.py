"""The real `csm-serve` command, configured through environment variables: it warms up to
SERVING, and on SIGTERM drains: health NOT_SERVING, new calls UNAVAILABLE, the stream in flight
finishes with its result, the process exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csm_client import SpeechClient

from .harness import free_port, long_audio_ms, wait_for

STARTUP_TIMEOUT_S = 300


def csm_serve() -> str:
    path = shutil.which("csm-serve", path=str(Path(sys.executable).parent))
    assert path, "csm-serve is not installed: run `uv pip install -e .` (scripts/setup.sh)"
    return path


def health_status(target: str, service: str = "csm.v1.Speech"):
    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2).status
        except grpc.RpcError:
            return None


@pytest.fixture()
def serve_process(tmp_path):
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "CSM_MODEL": "tiny", "CSM_DEVICE": "cpu", "CSM_DTYPE": "float32", "CSM_WATERMARK": "false",
        "CSM_HOST": "127.0.0.1", "CSM_PORT": str(port), "CSM_HTTP_PORT": str(http_port),
        "CSM_METRICS_PORT": str(metrics_port),
        "CSM_MAX_SLOTS": "2", "CSM_DRAIN_GRACE_S": "60", "CSM_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "csm-serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([csm_serve()], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process, f"127.0.0.1:{port}", metrics_port, log_path
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def test_sigterm_drains_the_stream_in_flight_and_refuses_new_calls(serve_process):
    process, target, metrics_port, log_path = serve_process
    wait_for(lambda: health_status(target) == health_pb2.HealthCheckResponse.SERVING or process.poll() is not None,
             timeout=STARTUP_TIMEOUT_S, interval=0.5, what="csm-serve to report SERVING")
    assert process.poll() is None, f"csm-serve exited early:\n{log_path.read_text()}"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert "csm:num_requests_running" in metrics

    with SpeechClient(target) as client:
        info = client.model_info(timeout=10)
        # Long enough to outlast the checks below, short enough to finish within the grace.
        in_flight = client.stream("Let me finish my sentence.", seed=9, timeout=120,
                                  max_audio_ms=min(long_audio_ms(info), 4_000))
        chunks, outcome = [], {}

        def consume():
            try:
                for chunk in in_flight:
                    chunks.append(chunk)
                outcome["result"] = in_flight.result
            except grpc.RpcError as error:
                outcome["error"] = error

        consumer = threading.Thread(target=consume)
        consumer.start()
        wait_for(lambda: chunks, timeout=60, what="the first chunk")
        process.send_signal(signal.SIGTERM)

        wait_for(lambda: health_status(target) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10,
                 what="health to turn NOT_SERVING")
        with pytest.raises(grpc.RpcError) as refused:
            list(client.stream("Too late.", max_audio_ms=160, timeout=10))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert not outcome, "the stream ended before the drain checks ran: make it longer"

        consumer.join(120)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.frames > 0 and result.audio_samples == sum(c.num_samples for c in chunks)
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert process.wait(60) == 0

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    messages = " | ".join(entry["message"] for entry in lines)
    assert "RANDOM WEIGHTS" in messages and "draining" in messages
