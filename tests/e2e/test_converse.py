"""csm.v1.Speech/Converse over a real loopback server (tiny engine) with the real Python clients:
a conversation with a stored voice, streamed text whose first sentence is heard before the
reply is complete, interrupts, bad input that fails one turn or ends one call and never another,
the conversation limits, and a client that goes away."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from csm_client import AsyncSpeechClient, SpeechClient
from csm_client.errors import field_violations
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc

from .conftest import start_tiny_engine
from .harness import LoopbackServer, wait_for
from .test_voices import mimi_encoder, take, voice_server, wav  # noqa: F401 (fixture)

SHORT_MS = 480


def summary(messages) -> list[tuple[str, str]]:
    return [(m.turn_id, m.WhichOneof("kind")) for m in messages]


def squash(pairs):
    """Consecutive audio messages of a turn as one."""
    out = []
    for p in pairs:
        if not out or p != out[-1] or p[1] != "audio":
            out.append(p)
    return out


def test_a_conversation_with_a_voice(engine, mimi_encoder, tmp_path):
    with voice_server(engine, mimi_encoder, tmp_path) as (client, encoder):
        voice = client.create_voice("host", [take()], timeout=120)
        conv = client.converse(voice="host", seed=3, max_audio_ms=SHORT_MS, timeout=120)
        conv.add_context("What's the plan for today?", speaker=1, audio=wav(seconds=1.0))
        conv.speak("We start with the review. Then lunch.")
        conv.speak("", turn_id="streamed", more_text=True)
        conv.send_text("First we finish the draft. ")
        conv.send_text("Then we ship", flush=True)
        conv.send_text(" it.", end_of_turn=True)
        conv.close()
        messages = list(conv)
    assert encoder.calls == 1  # the voice was encoded once, at creation
    assert squash(summary(messages)) == [
        ("", "started"), ("turn-1", "context"),
        ("turn-2", "audio"), ("turn-2", "result"), ("turn-2", "context"),
        ("streamed", "audio"), ("streamed", "result"), ("streamed", "context")]
    started = messages[0].started
    assert started.context_frames == voice.prompt_frames and started.max_seq_len == engine.info().limits.max_seq_len
    updates = [m.context for m in messages if m.HasField("context")]
    assert [u.turns for u in updates] == [1, 2, 3]
    assert updates[0].context_frames > started.context_frames and updates[2].context_frames > updates[1].context_frames
    for turn in ("turn-2", "streamed"):
        audio = [m.audio for m in messages if m.turn_id == turn and m.HasField("audio")]
        result = next(m.result for m in messages if m.turn_id == turn and m.HasField("result"))
        assert [a.sequence for a in audio] == list(range(len(audio)))  # one stream per turn
        assert result.audio_samples == sum(a.num_samples for a in audio) > 0 and result.request_id == turn
        assert result.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
        assert result.time_to_first_audio_ms > 0 and result.prompt_frames > started.context_frames
    streamed = next(m.result for m in messages if m.turn_id == "streamed" and m.HasField("result"))
    assert streamed.frames > 6  # three pieces of up to six frames each, generated one after the other
    assert engine.stats().conversations == 0


def test_streamed_text_is_heard_before_the_reply_is_complete(server):
    async def talk():
        async with AsyncSpeechClient(server.target) as client:
            conv = await client.converse(seed=5, max_audio_ms=SHORT_MS, timeout=120)
            await conv.speak("", more_text=True)
            await conv.send_text("Hello there, it is good to hear from you.")
            await conv.send_text(" And")  # the space after the period completes the first sentence
            t_sent = time.monotonic()
            first_audio = None
            messages = []
            async for message in conv:
                messages.append(message)
                if message.HasField("audio") and first_audio is None:
                    first_audio = time.monotonic() - t_sent
                    await conv.send_text(" the rest arrives later.", end_of_turn=True)
                    await conv.close()
            return first_audio, messages

    first_audio, messages = asyncio.run(talk())
    assert first_audio is not None  # audio came while the turn's text was still open
    result = next(m.result for m in messages if m.HasField("result"))
    assert result.frames > 0 and messages[-1].HasField("context")


def test_interrupt_keeps_what_was_heard_and_the_conversation_goes_on(client):
    conv = client.converse(seed=2, timeout=120)
    conv.speak("A long answer that the listener interrupts.", turn_id="long", max_audio_ms=20_000)
    messages = []
    for message in conv:
        messages.append(message)
        if message.HasField("audio") and message.turn_id == "long" and message.audio.sequence == 1:
            conv.interrupt(heard_ms=160)
            conv.speak("Sorry, go ahead.", turn_id="after", max_audio_ms=SHORT_MS)
            conv.close()
    result = next(m.result for m in messages if m.turn_id == "long" and m.HasField("result"))
    assert result.finish_reason == pb.FINISH_REASON_CANCELLED
    cut = next(m.context for m in messages if m.turn_id == "long" and m.HasField("context"))
    after = next(m.result for m in messages if m.turn_id == "after" and m.HasField("result"))
    assert after.finish_reason != pb.FINISH_REASON_CANCELLED and after.prompt_frames > cut.context_frames
    assert cut.context_frames == result.prompt_frames + 2 + 1  # two heard frames and the end-of-audio frame


def test_bad_turns_fail_alone(client, server):
    other = client.converse(seed=9, timeout=120)
    other.speak("I am another conversation.", max_audio_ms=SHORT_MS)
    conv = client.converse(timeout=120)
    conv.speak("Who?", speaker=99)
    conv.add_context("Garbled.", speaker=1, audio=b"not audio at all")
    conv.speak("", turn_id="empty")
    conv.speak("Still here.", max_audio_ms=SHORT_MS)
    conv.close()
    messages = list(conv)
    errors = {m.turn_id: field_violations(m.error) for m in messages if m.HasField("error")}
    assert errors == {"turn-1": {"speaker": errors["turn-1"]["speaker"]},
                      "turn-2": {"segment.audio": errors["turn-2"]["segment.audio"]},
                      "empty": {"text": "must not be empty"}}
    assert any(m.turn_id == "turn-4" and m.HasField("result") for m in messages)
    other.close()
    assert any(m.HasField("result") for m in other)


def raw_call(server, *requests):
    with grpc.insecure_channel(server.target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        return list(stub.Converse(iter(requests), timeout=60))


def raw_bytes_call(server, *payloads: bytes):
    """A Converse call whose request messages are these bytes, parsed or not."""
    with grpc.insecure_channel(server.target) as channel:
        call = channel.stream_stream("/csm.v1.Speech/Converse", request_serializer=lambda b: b,
                                     response_deserializer=pb.ConverseResponse.FromString)
        return list(call(iter(payloads), timeout=60))


def test_what_ends_a_whole_call(server, client):
    """Each of these ends its own call with a clear status; a conversation speaking beside them
    goes on untouched."""
    bystander = client.converse(seed=2, timeout=120)
    bystander.speak("I keep talking while the other calls fail.", max_audio_ms=2400)
    heard = iter(bystander)
    assert next(m for m in heard if m.HasField("audio"))  # it is speaking while the others fail
    speak = pb.ConverseRequest(speak=pb.SpeakTurn(text="Hi."))
    config = pb.ConverseRequest(config=pb.ConversationConfig())
    cases = [
        ((speak,), grpc.StatusCode.INVALID_ARGUMENT, "config"),
        ((config, config), grpc.StatusCode.INVALID_ARGUMENT, "config"),
        ((config, pb.ConverseRequest(text=pb.TextInput(text="orphan"))), grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ((pb.ConverseRequest(config=pb.ConversationConfig(voice="nobody")),), grpc.StatusCode.NOT_FOUND, None),
        ((pb.ConverseRequest(config=pb.ConversationConfig(speaker=99)),), grpc.StatusCode.INVALID_ARGUMENT,
         "config.speaker"),
    ]
    for requests, code, field in cases:
        with pytest.raises(grpc.RpcError) as exc:
            raw_call(server, *requests)
        assert exc.value.code() is code, requests
        if field is not None:
            assert field in field_violations(exc.value)
    invalid_utf8 = b"\x1a\x04\x1a\x02\xff\xfe"  # speak (3) { text (3): bytes that are not UTF-8 }
    for payloads in ((b"\xff\xff\xff",), (config.SerializeToString(), invalid_utf8)):
        with pytest.raises(grpc.RpcError) as exc:
            raw_bytes_call(server, *payloads)
        assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (payloads, exc.value.details())
    bystander.close()
    rest = list(heard)
    results = [m.result for m in rest if m.HasField("result")]
    assert len(results) == 1 and results[0].frames > 0 and not any(m.HasField("error") for m in rest)


def test_a_client_that_goes_away_frees_its_slot(client, engine):
    conv = client.converse(seed=4, timeout=120)
    conv.speak("A long turn the client walks away from.", max_audio_ms=20_000)
    for message in conv:
        if message.HasField("audio"):
            break
    assert engine.stats().conversations == 1
    conv.cancel()
    wait_for(lambda: engine.stats().conversations == 0 and engine.stats().slots_in_use == 0, timeout=10,
             what="the conversation's slot to be freed")


def test_conversation_limits():
    engine = start_tiny_engine(max_slots=2, max_conversations=1, conversation_max_lifetime_s=3.0)
    server = LoopbackServer(engine).start()
    try:
        with SpeechClient(server.target) as client:
            first = client.converse(timeout=60)
            first.speak("Hold the only conversation.", max_audio_ms=SHORT_MS)
            messages = iter(first)
            assert next(messages).HasField("started")
            second = client.converse(timeout=60)
            second.close()
            with pytest.raises(grpc.RpcError) as exc:
                list(second)
            assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # too many, with RetryInfo
            with pytest.raises(grpc.RpcError) as exc:
                list(messages)  # the lifetime passes
            assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "lifetime" in exc.value.details()
            wait_for(lambda: engine.stats().conversations == 0, timeout=10, what="the expired conversation to end")
            metrics = server.metrics()
            assert "csm:prefix_cache_hits_total" in metrics and metrics["csm:conversations"] == 0
    finally:
        server.stop()
        engine.shutdown()


def test_an_idle_conversation_gives_its_permit_back():
    """--max-conversations 1: a call that only sent its config rests after --conversation-idle-s,
    so another conversation can run; its own next turn waits for a permit (RESOURCE_EXHAUSTED with
    RetryInfo for that turn alone) and, once one is free, speaks in the same conversation."""
    engine = start_tiny_engine(max_slots=2, max_conversations=1, conversation_idle_s=0.5)
    server = LoopbackServer(engine).start()
    try:
        with SpeechClient(server.target) as client:
            idle = client.converse(timeout=60)
            messages = iter(idle)
            assert next(messages).HasField("started")
            time.sleep(1.5)  # idle past --conversation-idle-s: it rests
            other = client.converse(timeout=60)
            other.speak("I can talk now.", max_audio_ms=SHORT_MS)
            replies = iter(other)
            assert next(replies).HasField("started")
            idle.speak("Me again.", max_audio_ms=SHORT_MS, turn_id="refused")
            refused = next(messages)
            assert refused.turn_id == "refused" and refused.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            other.close()
            assert any(m.HasField("result") for m in replies)
            wait_for(lambda: engine.stats().conversations == 1, timeout=10, what="the other conversation to end")
            idle.speak("Now it is my turn.", max_audio_ms=SHORT_MS, turn_id="spoken")
            idle.close()
            assert any(m.turn_id == "spoken" and m.HasField("result") for m in messages)
    finally:
        server.stop()
        engine.shutdown()
