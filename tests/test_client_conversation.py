"""The Converse helpers of the Python client (sync and asyncio) against a scripted loopback
server: what they send, in which order, and how they read the answers. Against the real server:
tests/e2e/test_converse.py."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from csm_client import AsyncSpeechClient, SpeechClient
from csm_client.errors import explain_status, field_violations
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc


class ScriptedConverse(speech_pb2_grpc.SpeechServicer):
    """Answers every turn at once: a context update, or one audio chunk and a result; a speak
    turn with no text fails as the real server's would."""

    def __init__(self):
        self.received: list[pb.ConverseRequest] = []

    def Converse(self, request_iterator, context):
        turns, open_turn = 0, None
        for request in request_iterator:
            self.received.append(request)
            kind = request.WhichOneof("kind")
            if kind == "config":
                yield pb.ConverseResponse(started=pb.ConversationStarted(
                    conversation_id=request.config.conversation_id, max_seq_len=2048))
            elif kind == "context":
                turns += 1
                yield pb.ConverseResponse(turn_id=request.context.turn_id, context=pb.ContextUpdate(turns=turns))
            elif kind == "speak" and request.speak.more_text:
                open_turn = request.speak.turn_id
            elif kind == "speak" and not request.speak.text:
                yield pb.ConverseResponse(turn_id=request.speak.turn_id, error=bad_text())
            elif kind == "speak" or kind == "text" and request.text.end_of_turn:
                turn_id = request.speak.turn_id if kind == "speak" else open_turn
                turns += 1
                yield from spoken(turn_id, turns)


def bad_text() -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="invalid request: text: must not be empty")
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="text", description="must not be empty")]))
    return status


def spoken(turn_id: str, turns: int):
    yield pb.ConverseResponse(turn_id=turn_id, audio=pb.AudioChunk(sequence=0, data=b"\0\0" * 1920, num_samples=1920))
    yield pb.ConverseResponse(turn_id=turn_id, result=pb.SynthesisResult(
        request_id=turn_id, finish_reason=pb.FINISH_REASON_EOS, frames=1, audio_samples=1920))
    yield pb.ConverseResponse(turn_id=turn_id, context=pb.ContextUpdate(turns=turns))


@pytest.fixture()
def scripted():
    servicer = ScriptedConverse()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    speech_pb2_grpc.add_SpeechServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def summary(messages: list[pb.ConverseResponse]) -> list[tuple[str, str]]:
    return [(m.turn_id, m.WhichOneof("kind")) for m in messages]


EXPECTED = [
    ("", "started"),
    ("turn-1", "context"),
    ("turn-2", "audio"), ("turn-2", "result"), ("turn-2", "context"),
    ("reply", "audio"), ("reply", "result"), ("reply", "context"),
    ("turn-4", "error"),
]


def check_sent(received: list[pb.ConverseRequest]) -> None:
    kinds = [r.WhichOneof("kind") for r in received]
    assert kinds == ["config", "context", "speak", "speak", "text", "text", "speak", "interrupt"]
    config = received[0].config
    assert (config.voice, config.speaker, config.conversation_id) == ("narrator", 1, "c-7")
    assert config.output.encoding == pb.AUDIO_ENCODING_PCM_S16LE and config.sampling.seed == 11
    context = received[1].context
    assert (context.turn_id, context.segment.text, context.segment.speaker) == ("turn-1", "How are you?", 0)
    assert context.segment.audio.data == b"RIFF...." and context.segment.audio.encoding == pb.AUDIO_ENCODING_UNSPECIFIED
    plain, streamed = received[2].speak, received[3].speak
    assert not plain.HasField("speaker") and not plain.HasField("output") and not plain.sampling.HasField("seed")
    assert streamed.turn_id == "reply" and streamed.more_text and streamed.speaker == 0
    assert streamed.output.encoding == pb.AUDIO_ENCODING_OGG_OPUS and streamed.sampling.temperature == 0.5
    assert [(t.text.text, t.text.flush, t.text.end_of_turn) for t in received[4:6]] == [
        ("Fine, thanks. ", True, False), ("And you?", False, True)]
    assert received[7].interrupt.heard_ms == 400


def test_sync_conversation(scripted):
    servicer, target = scripted
    with SpeechClient(target) as client:
        conversation = client.converse(voice="narrator", speaker=1, seed=11, conversation_id="c-7", timeout=30)
        assert conversation.add_context("How are you?", speaker=0, audio=b"RIFF....") == "turn-1"
        assert conversation.speak("Well.") == "turn-2"
        reply = conversation.speak("", turn_id="reply", more_text=True, speaker=0, encoding="opus", temperature=0.5)
        conversation.send_text("Fine, thanks. ", flush=True)
        conversation.send_text("And you?", end_of_turn=True)
        assert conversation.speak("") == "turn-4"
        conversation.interrupt(heard_ms=400)
        conversation.close()
        messages = list(conversation)
    assert reply == "reply" and summary(messages) == EXPECTED
    assert messages[0].started.conversation_id == "c-7"
    error = messages[-1].error
    assert field_violations(error) == {"text": "must not be empty"}
    assert explain_status(error).startswith("INVALID_ARGUMENT: invalid request")
    check_sent(servicer.received)


def test_asyncio_conversation(scripted):
    servicer, target = scripted

    async def talk() -> list[pb.ConverseResponse]:
        async with AsyncSpeechClient(target) as client:
            conversation = await client.converse(voice="narrator", speaker=1, seed=11, conversation_id="c-7",
                                                 timeout=30)
            assert await conversation.add_context("How are you?", audio=b"RIFF....") == "turn-1"
            assert await conversation.speak("Well.") == "turn-2"
            await conversation.speak("", turn_id="reply", more_text=True, speaker=0, encoding="opus",
                                     temperature=0.5)
            await conversation.send_text("Fine, thanks. ", flush=True)
            await conversation.send_text("And you?", end_of_turn=True)
            assert await conversation.speak("") == "turn-4"
            await conversation.interrupt(heard_ms=400)
            await conversation.close()
            return [m async for m in conversation]

    assert summary(asyncio.run(talk())) == EXPECTED
    check_sent(servicer.received)
