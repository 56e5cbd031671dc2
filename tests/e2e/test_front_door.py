"""One front door for every transport, attacked through each: a client of Synthesize, Converse
or the HTTP API that stops reading is paused at the same unread-audio bound and then ended; a
stored voice that cannot be used and pathological JSON are client errors on every transport;
Converse turns that are wrong fail alone, and a half-closed streamed turn speaks its last
sentence. A real loopback server, real clients (grpc stubs, raw HTTP/1.1 over a socket)."""

from __future__ import annotations

import json
import logging
import queue
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from csm_client import SpeechClient
from csm_client.errors import field_violations
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc

from .conftest import start_tiny_engine
from .harness import LoopbackServer, long_audio_ms, wait_for
from .test_openai_api import call_json
from .test_voices import CountingEncoder, mimi_encoder, registry_for, take  # noqa: F401 (fixture)

NARROW = [("grpc.http2.bdp_probe", 0)]  # the transport keeps its 64 KiB window: unread audio stays on the server
SHORT_MS = 480
PAUSE_AFTER_S = 1.0
STALL_S = 3.0


@pytest.fixture(scope="module")
def flow():
    """A tiny engine that pauses a stream past 1 s of unread audio and ends it after 3 s paused."""
    engine = start_tiny_engine(max_slots=4, stream_buffer_s=PAUSE_AFTER_S, reader_stall_s=STALL_S)
    server = LoopbackServer(engine).start()
    with SpeechClient(server.target) as client:
        long = long_audio_ms(client.model_info())
    yield server, engine, long
    server.stop()
    engine.shutdown()


@contextmanager
def stopped_synthesize(server, long: int):
    with grpc.insecure_channel(server.target, options=NARROW) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Synthesize(
            pb.SynthesizeRequest(text="I never read.", max_audio_ms=long), timeout=300)
        next(call)

        def read_on() -> str:
            with pytest.raises(grpc.RpcError) as ended:
                for _ in call:
                    pass
            assert ended.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, ended.value
            return ended.value.details()

        yield read_on


@contextmanager
def stopped_converse(server, long: int):
    sends: queue.SimpleQueue = queue.SimpleQueue()
    sends.put(pb.ConverseRequest(config=pb.ConversationConfig(max_audio_ms=long)))
    sends.put(pb.ConverseRequest(speak=pb.SpeakTurn(text="I never read.", turn_id="slow")))
    with grpc.insecure_channel(server.target, options=NARROW) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Converse(iter(sends.get, None), timeout=300)
        assert next(call).HasField("started")
        assert next(call).HasField("audio")

        def read_on() -> str:
            messages = []
            for message in call:
                messages.append(message)
                if message.HasField("error"):  # the conversation goes on after its stalled turn
                    sends.put(pb.ConverseRequest(speak=pb.SpeakTurn(text="Now I read.", max_audio_ms=SHORT_MS)))
                    sends.put(None)
            errors = [m for m in messages if m.HasField("error")]
            assert [m.turn_id for m in errors] == ["slow"]
            assert errors[0].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert any(m.HasField("result") and m.turn_id == "turn-2" for m in messages), messages[-3:]
            return errors[0].error.message

        yield read_on


@contextmanager
def stopped_http(server, long: int):
    body = json.dumps({"model": "tts-1", "input": "I never read.", "voice": "0", "response_format": "pcm",
                       "max_audio_ms": long}).encode()
    head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.connect(("127.0.0.1", int(server.http_url.rsplit(":", 1)[1])))
        sock.sendall(head + body)
        first = sock.recv(1024)
        assert first.startswith(b"HTTP/1.1 200"), first

        def read_on() -> str:
            received = bytearray(first)
            sock.settimeout(60)
            while chunk := sock.recv(65536):
                received += chunk
            whole = long * 48  # 16-bit samples at 24 kHz: 48 bytes per ms
            assert len(received) < whole / 2 and not received.endswith(b"0\r\n\r\n"), "the body was not cut"
            return "connection closed mid-body"

        yield read_on


STOPPED = {"synthesize": stopped_synthesize, "converse": stopped_converse, "http": stopped_http}


@pytest.mark.parametrize("front", list(STOPPED))
def test_a_client_that_stops_reading_is_paused_then_ended_on_every_transport(flow, front):
    server, engine, long = flow
    with STOPPED[front](server, long) as read_on:
        wait_for(lambda: engine.stats().requests_paused == 1, timeout=60, what=f"the {front} stream to pause")
        paused = engine.stats()
        wait_for(lambda: engine.stats().requests_paused == 0 and engine.stats().requests_decoding == 0,
                 timeout=STALL_S + 30, what=f"the stalled {front} stream to be ended")
        how = read_on()
    print(f"\n{front}: paused with {paused.requests_decoding} decoding, ended after {STALL_S:g} s paused: {how}")
    wait_for(lambda: engine.stats().slots_in_use == 0, timeout=30, what="every slot to be freed")


class OtherCodec(CountingEncoder):
    @property
    def codec(self) -> str:
        return "mimi:0000000000000000"


def test_unusable_stored_voices_and_deep_json_are_client_errors_on_every_transport(engine, mimi_encoder, tmp_path):
    other, _ = registry_for(engine, mimi_encoder, tmp_path)
    other._encoder = OtherCodec(mimi_encoder)  # a deployment with other Mimi weights, on the same directory
    good, _ = registry_for(engine, mimi_encoder, tmp_path)
    for registry, name in ((other, "elsewhere"), (good, "torn")):
        maker = LoopbackServer(engine, voices=registry).start()
        try:
            with SpeechClient(maker.target) as client:
                client.create_voice(name, [take()], timeout=120)
        finally:
            maker.stop()
    path = Path(tmp_path, "torn.safetensors")
    path.write_bytes(path.read_bytes()[:200])
    server = LoopbackServer(engine, voices=good).start()
    try:
        for name in ("elsewhere", "torn"):
            status, body = call_json("POST", f"{server.http_url}/v1/audio/speech", json.dumps(
                {"model": "tts-1", "input": "Hi.", "voice": name, "max_audio_ms": SHORT_MS}).encode())
            assert status == 400 and body["error"]["type"] == "invalid_request_error", (name, status, body)
            assert name in body["error"]["message"]
            with SpeechClient(server.target) as client:
                with pytest.raises(grpc.RpcError) as refused:
                    client.synthesize("Hi.", voice=name, max_audio_ms=SHORT_MS, timeout=30)
                assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                conv = client.converse(voice=name, timeout=30)
                conv.close()
                with pytest.raises(grpc.RpcError) as refused:
                    list(conv)
                assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        for deep in (b"[" * 100_000, b'{"a":' * 50_000):
            status, body = call_json("POST", f"{server.http_url}/v1/audio/speech", deep)
            assert status == 400 and body["error"]["param"] == "body", (status, body)
    finally:
        server.stop()


def converse(server, *requests) -> list[pb.ConverseResponse]:
    with grpc.insecure_channel(server.target) as channel:
        return list(speech_pb2_grpc.SpeechStub(channel).Converse(iter(requests), timeout=120))


def test_an_invalid_turn_interrupted_before_it_starts_fails_alone(server):
    speak = pb.SpeakTurn(text="A long first turn.", max_audio_ms=4000, turn_id="first")
    bad = pb.SpeakTurn(text="Bad output.", turn_id="bad", output=pb.OutputFormat(encoding=77))
    sends: queue.SimpleQueue = queue.SimpleQueue()
    for message in (pb.ConverseRequest(config=pb.ConversationConfig(sampling=pb.Sampling(seed=1))), pb.ConverseRequest(speak=speak),
                    pb.ConverseRequest(speak=bad)):
        sends.put(message)
    messages = []
    with grpc.insecure_channel(server.target) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Converse(iter(sends.get, None), timeout=120)
        for message in call:
            messages.append(message)
            if message.turn_id == "first" and message.HasField("audio") and len(messages) == 2:
                sends.put(pb.ConverseRequest(interrupt=pb.Interrupt()))  # drops "bad" before it starts
                sends.put(pb.ConverseRequest(speak=pb.SpeakTurn(text="After.", max_audio_ms=SHORT_MS)))
                sends.put(None)
    errors = {m.turn_id: field_violations(m.error) for m in messages if m.HasField("error")}
    assert set(errors) == {"bad"} and "output.encoding" in errors["bad"]
    results = {m.turn_id: m.result.finish_reason for m in messages if m.HasField("result")}
    assert results == {"first": pb.FINISH_REASON_CANCELLED, "turn-3": results["turn-3"]}
    assert results["turn-3"] in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)


def test_a_half_closed_streamed_turn_speaks_its_last_sentence(server):
    messages = converse(server, pb.ConverseRequest(config=pb.ConversationConfig(sampling=pb.Sampling(seed=2), max_audio_ms=SHORT_MS)),
                        pb.ConverseRequest(speak=pb.SpeakTurn(turn_id="streamed", more_text=True)),
                        pb.ConverseRequest(text=pb.TextInput(text="First sentence. ")),
                        pb.ConverseRequest(text=pb.TextInput(text="And the unfinished last one")))
    assert not any(m.HasField("error") for m in messages), [m.error for m in messages if m.HasField("error")]
    result = next(m.result for m in messages if m.HasField("result"))
    context = [m.context for m in messages if m.HasField("context")]
    assert result.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
    assert result.frames >= 2  # two pieces: each sentence makes at least one frame
    assert context and context[-1].turns == 1


def test_a_half_closed_streamed_turn_with_no_text_is_empty(server):
    messages = converse(server, pb.ConverseRequest(config=pb.ConversationConfig()),
                        pb.ConverseRequest(speak=pb.SpeakTurn(turn_id="silent", more_text=True)),
                        pb.ConverseRequest(text=pb.TextInput(text="   ")))
    errors = {m.turn_id: field_violations(m.error) for m in messages if m.HasField("error")}
    assert errors == {"silent": {"text": "must not be empty"}}


@pytest.mark.parametrize("stage", ["speaking", "streamed text open"])
def test_a_converse_client_that_goes_away_unread_logs_no_error(server, engine, caplog, stage):
    sends: queue.SimpleQueue = queue.SimpleQueue()
    sends.put(pb.ConverseRequest(config=pb.ConversationConfig(max_audio_ms=4000)))
    sends.put(pb.ConverseRequest(speak=pb.SpeakTurn(text="Nobody listens to me.",
                                                    more_text=stage == "streamed text open")))
    with caplog.at_level(logging.INFO):
        with grpc.insecure_channel(server.target, options=NARROW) as channel:
            call = speech_pb2_grpc.SpeechStub(channel).Converse(iter(sends.get, None), timeout=60)
            assert next(call).HasField("started")
            time.sleep(1.0)  # audio piles up unread
            call.cancel()
        wait_for(lambda: engine.stats().conversations == 0 and engine.stats().slots_in_use == 0, timeout=30,
                 what="the conversation to end")
        time.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
