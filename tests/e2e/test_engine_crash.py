"""When the engine thread itself dies, nobody hangs: requests in flight end with INTERNAL, health
turns NOT_SERVING, new calls get UNAVAILABLE, and csm-serve exits with status 1 so that
Kubernetes restarts it. The crash is injected by a runner that raises a BaseException past the
step's own error handling, as a bug in the engine loop would. The same holds when a pipeline
thread dies: here the Mimi thread, by a streaming decoder that raises past the Mimi call's own
error handling."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csm_client import SpeechClient
from server.engine.config import EngineConfig
from server.engine.engine import build
from server.engine.parts import load_parts
from server.engine.threads import PipelineStopped

from .harness import LoopbackServer, free_port, wait_for

CRASH_TEXT = "crash the engine"


class EngineBug(BaseException):
    """Not an Exception: it escapes the step's per-batch error handling, as a real bug in the loop might."""


class CrashingRunner:
    """The real runner, until a request with CRASH_TEXT takes part in a step."""

    def __init__(self, runner):
        self._runner = runner

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, plan):
        if any(c.request.params.text == CRASH_TEXT for c in plan.prefill):
            raise EngineBug("injected engine-loop bug")
        return self._runner.run(plan)


class CrashingCodec:
    """The real codec, whose streaming decoder raises EngineBug once `crash` is set."""

    def __init__(self, codec, crash: threading.Event):
        self._codec, self._crash = codec, crash

    def __getattr__(self, name):
        return getattr(self._codec, name)

    def stream_decoder(self, batch_size: int):
        return CrashingDecoder(self._codec.stream_decoder(batch_size), self._crash)


class CrashingDecoder:
    def __init__(self, decoder, crash: threading.Event):
        self._decoder, self._crash = decoder, crash

    def __getattr__(self, name):
        return getattr(self._decoder, name)

    def decode(self, codes, active, rows=None):
        if self._crash.is_set():
            raise EngineBug("injected Mimi-thread bug")
        return self._decoder.decode(codes, active, rows)


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="csm.v1.Speech"), timeout=5).status


@contextmanager
def serving(fault):
    """A serving loopback server whose tiny engine has `fault(parts)` applied; yields (server, engine)."""
    config = EngineConfig(model="tiny", device="cpu", dtype="float32", watermark=False, max_slots=2, max_queue=4)
    parts = load_parts(config)
    fault(parts)
    engine = build(config, parts)
    engine.start()
    assert engine.wait_ready(300)
    server = LoopbackServer(engine).start()
    try:
        wait_for(lambda: health(server.target) == health_pb2.HealthCheckResponse.SERVING, what="SERVING")
        yield server, engine
    finally:
        server.stop()
        engine.shutdown()


def test_requests_fail_health_turns_not_serving_and_new_calls_are_refused():
    def crashing_runner(parts):
        parts.runner = CrashingRunner(parts.runner)

    with serving(crashing_runner) as (server, _engine):
        with SpeechClient(server.target) as client:
            running = client.stream("I am running.", max_audio_ms=20_000, seed=1, timeout=120)
            chunks = iter(running)
            next(chunks)
            outcome = {}
            reader = threading.Thread(target=lambda: outcome.setdefault("code", _drain(chunks)))
            reader.start()
            with pytest.raises(grpc.RpcError) as crashed:
                list(client.stream(CRASH_TEXT, max_audio_ms=400, timeout=60))
            reader.join(60)
            assert crashed.value.code() is grpc.StatusCode.INTERNAL and "engine stopped" in crashed.value.details()
            assert outcome["code"] is grpc.StatusCode.INTERNAL  # the stream in flight did not hang
            wait_for(lambda: health(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
            assert server.server.engine_failed.is_set()
            with pytest.raises(grpc.RpcError) as refused:
                list(client.stream("Anyone there?", max_audio_ms=160, timeout=30))
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_mimi_thread_death_fails_the_call_in_flight_and_turns_health_not_serving():
    crash = threading.Event()

    def crashing_codec(parts):
        parts.codec = CrashingCodec(parts.codec, crash)

    with serving(crashing_codec) as (server, engine):
        with SpeechClient(server.target) as client:
            chunks = iter(client.stream("I am running.", max_audio_ms=20_000, seed=1, timeout=120))
            next(chunks)
            crash.set()
            with pytest.raises(grpc.RpcError) as failed:
                for _ in chunks:
                    pass
            assert failed.value.code() is grpc.StatusCode.INTERNAL and "engine stopped" in failed.value.details()
            wait_for(lambda: health(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
            assert server.server.engine_failed.is_set()
            failure = engine.failure
            assert isinstance(failure, PipelineStopped) and "csm-mimi" in str(failure)
            with pytest.raises(grpc.RpcError) as refused:
                list(client.stream("Anyone there?", max_audio_ms=160, timeout=30))
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def _drain(chunks) -> grpc.StatusCode:
    try:
        for _ in chunks:
            pass
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


SERVE_WITH_A_BUG = textwrap.dedent("""
    import sys
    import server.engine.engine as engine_module
    from tests.e2e.test_engine_crash import CrashingRunner
    real_load_parts = engine_module.load_parts

    def load_parts(config):
        parts = real_load_parts(config)
        parts.runner = CrashingRunner(parts.runner)
        return parts

    engine_module.load_parts = load_parts
    from server.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_csm_serve_exits_non_zero_when_its_engine_dies(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "NO_TORCH_COMPILE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_WITH_A_BUG, "--model", "tiny", "--device", "cpu", "--no-watermark",
         "--host", "127.0.0.1", "--port", str(port), "--http-port", "0", "--metrics-port", "0",
         "--voices-dir", str(tmp_path / "voices")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: _serving(target), timeout=300, what="csm-serve to serve")
        with SpeechClient(target) as client:
            with pytest.raises(grpc.RpcError):
                list(client.stream(CRASH_TEXT, max_audio_ms=400, timeout=60))
        assert proc.wait(timeout=60) == 1
        log = proc.stdout.read()
        assert "exiting so that the process is restarted" in log and "injected engine-loop bug" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _serving(target: str) -> bool:
    try:
        return health(target) == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        time.sleep(0.2)
        return False
