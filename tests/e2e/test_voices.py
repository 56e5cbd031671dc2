"""csm.v1.Voices and SynthesizeRequest.voice over a real loopback server: the tiny engine, its
Mimi (random weights) encoding each voice once, voices in a temporary directory. Two servers on
one directory stand for two replicas; a new server on an old directory for a restart."""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from csm_client import ContextTurn, SpeechClient, csm_say, csm_voice
from csm_client.errors import field_violations, quota_violations
from csm_core.constants import NUM_CODEBOOKS
from server.voices.config import VoicesConfig
from server.voices.mimi_encoder import MimiVoiceEncoder
from server.voices.registry import VoiceLimits, VoiceRegistry
from server.voices.store import SUFFIX, VoiceStore

from .harness import LoopbackServer

SHORT_MS = 480  # six frames keep each synthesis short


class CountingEncoder:
    """The server's real encoder, counting the calls that reach it."""

    def __init__(self, inner: MimiVoiceEncoder):
        self.inner = inner
        self.calls = 0

    @property
    def codec(self) -> str:
        return self.inner.codec

    def encode(self, clips):
        self.calls += 1
        return self.inner.encode(clips)


@pytest.fixture(scope="module")
def mimi_encoder(engine):
    encoder = MimiVoiceEncoder(engine.parts.codec, engine.threads.torch_threads)
    yield encoder
    encoder.close()


def registry_for(engine, mimi_encoder, directory, **config) -> tuple[VoiceRegistry, CountingEncoder]:
    cfg = VoicesConfig(directory=str(directory), **config)
    encoder = CountingEncoder(mimi_encoder)
    return VoiceRegistry(VoiceStore(cfg.path), VoiceLimits.for_engine(engine.info().limits, cfg), encoder,
                         engine.parts.tokenizer), encoder


@contextmanager
def voice_server(engine, mimi_encoder, directory, **config):
    """A loopback server whose voices live in `directory`; yields (client, encoder)."""
    registry, encoder = registry_for(engine, mimi_encoder, directory, **config)
    server = LoopbackServer(engine, voices=registry).start()
    try:
        with SpeechClient(server.target) as client:
            yield client, encoder
    finally:
        server.stop()


def wav(seconds: float = 1.0, rate: int = 16_000, tone: float = 7.0) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate))
    sf.write(buf, 0.3 * np.sin(t / tone), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def take(text: str = "This is how I sound.", speaker: int = 0, **audio) -> ContextTurn:
    return ContextTurn(text=text, speaker=speaker, audio=wav(**audio))


def codes_reaching_the_engine(engine, monkeypatch) -> list:
    """Records the context of every request the engine accepts."""
    seen = []
    submit = engine.submit

    def spy(params):
        seen.append(params.context)
        return submit(params)

    monkeypatch.setattr(engine, "submit", spy)
    return seen


def test_create_get_list_delete(engine, mimi_encoder, tmp_path):
    with voice_server(engine, mimi_encoder, tmp_path) as (client, encoder):
        raw = np.round(0.2 * np.sin(np.arange(8_000) / 3.0) * 32767).astype("<i2").tobytes()
        segments = [take(speaker=1, seconds=1.0, rate=24_000),
                    ContextTurn(text="And in raw PCM.", speaker=2, audio=raw, encoding="pcm_s16le", sample_rate=8_000)]
        before = time.time()
        voice = client.create_voice("narrator", segments, description="two takes", timeout=120)
        assert encoder.calls == 1
        assert [s.audio_frames for s in voice.segments] == [13, 13]  # 1 s at 24 kHz; 1 s at 8 kHz
        texts = [("This is how I sound.", 1), ("And in raw PCM.", 2)]
        assert [(s.text, s.speaker) for s in voice.segments] == texts
        assert [s.prompt_frames for s in voice.segments] == [
            len(engine.parts.tokenizer.encode_turn(spk, text)) + 13 + 1 for text, spk in texts]
        assert voice.prompt_frames == sum(s.prompt_frames for s in voice.segments)
        assert voice.audio_ms == 26 * 80 and voice.description == "two takes"
        assert voice.content_hash.startswith("sha256:") and voice.codec == mimi_encoder.codec
        assert before - 1 <= voice.create_time.seconds <= time.time() + 1
        assert voice.size_bytes == (tmp_path / f"narrator{SUFFIX}").stat().st_size

        assert client.get_voice("narrator") == voice
        client.create_voice("alto", [take()], timeout=120)
        page = client.list_voices_page(page_size=1)
        assert [v.name for v in page.voices] == ["alto"] and page.next_page_token
        assert page.total_voices == 2 and page.total_size_bytes > voice.size_bytes
        assert page.max_voices == VoicesConfig().max_voices
        assert [v.name for v in client.list_voices()] == ["alto", "narrator"]

        assert client.delete_voice("narrator")
        assert not client.delete_voice("narrator", allow_missing=True)
        assert [v.name for v in client.list_voices()] == ["alto"]
        assert encoder.calls == 2


def test_voice_errors(engine, mimi_encoder, tmp_path):
    with voice_server(engine, mimi_encoder, tmp_path, max_voices=2) as (client, encoder):
        client.create_voice("taken", [take()], timeout=120)

        def code(call):
            with pytest.raises(grpc.RpcError) as exc:
                call()
            return exc.value

        error = code(lambda: client.create_voice("taken", [take(tone=3.0)], timeout=60))
        assert error.code() is grpc.StatusCode.ALREADY_EXISTS
        for call in (lambda: client.get_voice("nobody"), lambda: client.delete_voice("nobody"),
                     lambda: client.synthesize("Hi.", voice="nobody", max_audio_ms=SHORT_MS, timeout=60),
                     lambda: client.get_voice("../etc/passwd")):
            assert code(call).code() is grpc.StatusCode.NOT_FOUND

        invalid = {
            "name": [take()],
            "segments[0].audio": [ContextTurn(text="No audio.")],
            "segments[1].text": [take(), take(text=" ")],
        }
        for field, segments in invalid.items():
            error = code(lambda: client.create_voice("Bad Name" if field == "name" else "ok", segments, timeout=60))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and field in field_violations(error), field
        error = code(lambda: client.create_voice("noise", [ContextTurn(text="Hm.", audio=b"not audio")], timeout=60))
        assert list(field_violations(error)) == ["segments[0].audio"]
        room = engine.info().limits.max_seq_len - 64 - engine.info().limits.default_max_audio_ms // 80
        seconds = (room + 40) * 0.08  # more frames than the room leaves
        error = code(lambda: client.create_voice("long", [take(seconds=seconds)], timeout=120))
        assert "room to speak" in field_violations(error)["segments"]
        calls = encoder.calls

        client.create_voice("second", [take()], timeout=120)
        error = code(lambda: client.create_voice("third", [take()], timeout=60))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "voices" in quota_violations(error)
        assert encoder.calls == calls + 1  # refused voices were never encoded


def test_synthesize_with_a_voice_sends_its_codes(engine, mimi_encoder, tmp_path, monkeypatch):
    with voice_server(engine, mimi_encoder, tmp_path) as (client, encoder):
        voice = client.create_voice("speaker-a", [take(speaker=3)], timeout=120)
        seen = codes_reaching_the_engine(engine, monkeypatch)
        stream = client.stream("Hello with a voice.", voice="speaker-a", encoding="pcm", max_audio_ms=SHORT_MS,
                               seed=3, context=[ContextTurn(text="Inline, after the voice.", speaker=1)], timeout=120)
        chunks = list(stream)
        assert chunks and stream.result.frames >= 1
        (context,) = seen
        assert [(s.speaker, s.text) for s in context] == [(3, "This is how I sound."), (1, "Inline, after the voice.")]
        assert context[0].audio is None and context[0].codes.shape == (NUM_CODEBOOKS, voice.segments[0].audio_frames)
        assert context[0].codes.dtype == np.int16 and context[1].codes is None
        assert encoder.calls == 1

        with pytest.raises(grpc.RpcError) as exc:  # the request's own fields are named, not the combined context
            client.synthesize("Hi.", voice="speaker-a", context=[ContextTurn(text="x", speaker=99)], timeout=60)
        assert list(field_violations(exc.value)) == ["context[0].speaker"]


def test_the_openai_endpoint_speaks_with_a_stored_voice(engine, mimi_encoder, tmp_path, monkeypatch):
    """`voice` names a stored voice first (it speaks as its last segment's speaker, the voice's
    codes open the context): the same audio as csm.v1 with that voice and speaker, to within
    one 16-bit step (docs/api.md, "What a seed repeats")."""
    from openai import BadRequestError, OpenAI

    registry, encoder = registry_for(engine, mimi_encoder, tmp_path)
    server = LoopbackServer(engine, voices=registry).start()
    try:
        openai = OpenAI(base_url=f"{server.http_url}/v1", api_key="none", max_retries=0, timeout=120)
        with SpeechClient(server.target) as client:
            client.create_voice("alloy", [take(speaker=2)], timeout=120)  # a stored voice wins over OpenAI's name
            seen = codes_reaching_the_engine(engine, monkeypatch)
            line = dict(model="tts-1", input="Hello over HTTP.", response_format="pcm",
                        extra_body={"seed": 9, "max_audio_ms": SHORT_MS})
            over_http = openai.audio.speech.create(voice="alloy", **line).content
            (context,) = seen
            assert [(s.speaker, s.text, s.codes.shape[1]) for s in context] == [(2, "This is how I sound.", 13)]
            over_grpc = b"".join(c.data for c in client.stream(
                "Hello over HTTP.", voice="alloy", speaker=2, seed=9, encoding="pcm", max_audio_ms=SHORT_MS,
                timeout=120))
            a, b = np.frombuffer(over_http, "<i2"), np.frombuffer(over_grpc, "<i2")
            assert len(a) == len(b) > 0 and int(np.abs(a.astype(np.int32) - b).max()) <= 1
            assert encoder.calls == 1  # used from its stored codes, never encoded again

            seen.clear()
            openai.audio.speech.create(voice="echo", **line)  # not stored: OpenAI's name, speaker 0, no context
            assert seen == [()]
            with pytest.raises(BadRequestError) as error:
                openai.audio.speech.create(voice="nobody", **line)
            assert error.value.body["param"] == "voice" and "stored voice" in error.value.body["message"]
    finally:
        server.stop()


def test_the_voice_codes_are_in_the_prompt(engine, mimi_encoder, tmp_path):
    with voice_server(engine, mimi_encoder, tmp_path) as (client, _):
        voice = client.create_voice("in-prompt", [take()], timeout=120)
        result = client.synthesize("Hello.", voice="in-prompt", max_audio_ms=SHORT_MS, timeout=120).result
        assert result.prompt_frames == voice.prompt_frames + len(engine.parts.tokenizer.encode_turn(0, "Hello."))


def test_a_restarted_server_uses_stored_voices_without_encoding(engine, mimi_encoder, tmp_path, monkeypatch):
    with voice_server(engine, mimi_encoder, tmp_path) as (client, _):
        created = client.create_voice("keeper", [take()], timeout=120)
    mimi_calls = []
    encode = engine.parts.codec.encode
    monkeypatch.setattr(engine.parts.codec, "encode", lambda waves: mimi_calls.append(len(waves)) or encode(waves))
    seen = codes_reaching_the_engine(engine, monkeypatch)
    with voice_server(engine, mimi_encoder, tmp_path) as (client, encoder):
        assert client.list_voices() == [created]
        result = client.synthesize("Back again.", voice="keeper", max_audio_ms=SHORT_MS, timeout=120).result
        assert result.frames >= 1
    assert encoder.calls == 0 and mimi_calls == []
    assert seen[0][0].codes is not None and seen[0][0].audio is None


def test_two_servers_on_one_directory(engine, mimi_encoder, tmp_path):
    with voice_server(engine, mimi_encoder, tmp_path) as (a, _), voice_server(engine, mimi_encoder, tmp_path) as (b, _):
        first = a.create_voice("shared", [take(tone=7.0)], timeout=120)
        assert b.get_voice("shared") == first  # no restart: a miss looks at the directory
        assert b.synthesize("From the other replica.", voice="shared", max_audio_ms=SHORT_MS,
                            timeout=120).result.frames >= 1
        with pytest.raises(grpc.RpcError) as exc:
            b.create_voice("shared", [take(tone=3.0)], timeout=60)
        assert exc.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert b.delete_voice("shared")
        with pytest.raises(grpc.RpcError) as exc:
            a.synthesize("Gone.", voice="shared", max_audio_ms=SHORT_MS, timeout=60)
        assert exc.value.code() is grpc.StatusCode.NOT_FOUND
        second = b.create_voice("shared", [take(tone=3.0)], timeout=120)
        assert second.content_hash != first.content_hash
        assert a.get_voice("shared").content_hash == second.content_hash


def test_deleting_a_voice_does_not_disturb_its_streams(engine, mimi_encoder, tmp_path):
    with voice_server(engine, mimi_encoder, tmp_path) as (client, _):
        client.create_voice("fleeting", [take()], timeout=120)
        stream = client.stream("A longer line, spoken while its voice is deleted.", voice="fleeting",
                               encoding="pcm", max_audio_ms=2_000, seed=5, timeout=120)
        chunks = iter(stream)
        first = next(chunks)
        assert client.delete_voice("fleeting")
        rest = list(chunks)
        assert stream.result is not None
        assert sum(c.num_samples for c in [first, *rest]) == stream.result.audio_samples


def test_voices_service_is_reflected(engine, mimi_encoder, tmp_path):
    with voice_server(engine, mimi_encoder, tmp_path) as (client, _):
        with grpc.insecure_channel(client.connection.target) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "csm.v1.Voices" in services and "csm.v1.Speech" in services


def test_csm_voice_and_csm_say_with_a_voice(engine, mimi_encoder, tmp_path, capsys):
    first, second = tmp_path / "take1.wav", tmp_path / "take2.wav"
    first.write_bytes(wav(tone=5.0))
    second.write_bytes(wav(tone=9.0))
    with voice_server(engine, mimi_encoder, tmp_path / "voices") as (client, _):
        server = ["--server", client.connection.target, "--timeout", "120"]
        assert csm_voice.main([*server, "create", "cli-voice", "--audio", str(first), "--text", "Take one.",
                               "--audio", str(second), "--text", "Take two.", "--speaker", "0", "--speaker", "1",
                               "--description", "made by csm-voice"]) == 0
        assert "cli-voice: 2 segments" in capsys.readouterr().out
        assert csm_voice.main([*server, "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [v["name"] for v in listed["voices"]] == ["cli-voice"] and listed["totalVoices"] == 1
        assert csm_voice.main([*server, "get", "cli-voice"]) == 0
        assert "[1] speaker 1, 1.0 s: Take two." in capsys.readouterr().out

        out = tmp_path / "said.wav"
        assert csm_say.main(["Said in a stored voice.", "-o", str(out), "--voice", "cli-voice", "--max-audio-ms",
                             str(SHORT_MS), "-q", *server[:2]]) == 0
        assert sf.info(str(out)).frames > 0

        assert csm_voice.main([*server, "delete", "cli-voice"]) == 0
        assert csm_voice.main([*server, "delete", "cli-voice"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        assert csm_voice.main([*server, "delete", "cli-voice", "--missing-ok"]) == 0
