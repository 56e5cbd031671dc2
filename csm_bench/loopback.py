"""csm-serve in this process, as csm-bench-voices' client sees it: the loopback server, timed
Synthesize calls and a Converse call driven through the raw stubs."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np

from csm_core.constants import SAMPLE_RATE
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc
from csm_wire import voices_pb2_grpc
from server.app import ServerConfig, SpeechServer
from server.engine.config import EngineConfig
from server.engine.engine import Engine, build
from server.voices.config import VoicesConfig
from server.voices.mimi_encoder import open_registry


class Loopback:
    """csm-serve in this process: the engine, voices in `voices_dir`, a gRPC server on 127.0.0.1."""

    def __init__(self, config: EngineConfig, voices_dir: str):
        self.engine: Engine = build(config)
        self.engine.start()
        if not self.engine.wait_ready(1800):
            raise RuntimeError("the engine did not warm up")
        registry = open_registry(self.engine, VoicesConfig(directory=voices_dir))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server = SpeechServer(self.engine, ServerConfig(host="127.0.0.1", port=0, metrics_port=None), registry)
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(60)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.speech = speech_pb2_grpc.SpeechStub(self.channel)
        self.voices = voices_pb2_grpc.VoicesStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.engine.shutdown()


def audio_input(samples: np.ndarray) -> pb.AudioInput:
    return pb.AudioInput(data=samples.astype("<f4").tobytes(), encoding=pb.AUDIO_ENCODING_PCM_F32LE,
                         sample_rate=SAMPLE_RATE)


def pcm16_input(data: bytes) -> pb.AudioInput:
    return pb.AudioInput(data=data, encoding=pb.AUDIO_ENCODING_PCM_S16LE, sample_rate=SAMPLE_RATE)


@dataclass(slots=True)
class Timed:
    ttfa_s: float  # client side: request sent -> first audio chunk received
    result: pb.SynthesisResult
    audio: bytes  # PCM16 at 24 kHz


def synthesize(server: Loopback, request: pb.SynthesizeRequest) -> Timed:
    t0 = time.perf_counter()
    first, audio, result = None, [], None
    for msg in server.speech.Synthesize(request, timeout=1800):
        if msg.HasField("audio"):
            first = time.perf_counter() - t0 if first is None else first
            audio.append(msg.audio.data)
        else:
            result = msg.result
    return Timed(first, result, b"".join(audio))



class Converse:
    """A Converse call with the raw stubs: messages are sent from any thread, read from one."""

    def __init__(self, server: Loopback, config: pb.ConversationConfig):
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox.put(pb.ConverseRequest(config=config))
        self._messages = iter(server.speech.Converse(iter(self._outbox.get, None), timeout=3600))
        self.started = next(self._messages).started

    def send(self, **kind) -> float:
        self._outbox.put(pb.ConverseRequest(**kind))
        return time.perf_counter()

    def until(self, turn_id: str, kind: str) -> tuple[pb.ConverseResponse, list[pb.ConverseResponse]]:
        seen = []
        for msg in self._messages:
            seen.append(msg)
            if msg.HasField("error"):
                raise RuntimeError(f"turn {msg.turn_id} failed: {msg.error.message}")
            if msg.turn_id == turn_id and msg.HasField(kind):
                return msg, seen
        raise RuntimeError("the conversation ended early")

    def close(self) -> None:
        self._outbox.put(None)
        for _ in self._messages:
            pass
