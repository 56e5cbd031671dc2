"""End-to-end fixtures: the real engine with the `tiny` preset (random weights) behind a real
grpc.aio server on 127.0.0.1."""

from __future__ import annotations

import pytest

from csm_client import SpeechClient
from server.engine.config import EngineConfig
from server.engine.engine import Engine, build

from .harness import LoopbackServer

WARMUP_TIMEOUT_S = 300


def start_tiny_engine(**overrides) -> Engine:
    config = EngineConfig(**{"model": "tiny", "device": "cpu", "dtype": "float32", "watermark": False,
                             "max_slots": 4, "max_queue": 16, **overrides})
    engine = build(config)
    engine.start()
    assert engine.wait_ready(WARMUP_TIMEOUT_S), "the tiny engine did not warm up"
    return engine


@pytest.fixture(scope="session")
def engine():
    engine = start_tiny_engine()
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def server(engine):
    server = LoopbackServer(engine).start()
    yield server
    server.stop()


@pytest.fixture()
def client(server):
    with SpeechClient(server.target) as client:
        yield client


@pytest.fixture(scope="session")
def model_info(server):
    with SpeechClient(server.target) as client:
        return client.model_info(timeout=10)
