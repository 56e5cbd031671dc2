"""Tenants over a real loopback server with bearer tokens: two tokens of the named tenant `alice`
and one token listed alone (a tenant of its own, `bob` here). Each tenant lists, reads, uses
(gRPC Synthesize, the HTTP API, Converse) and deletes only its own voices, and sees another's
exactly as a voice that does not exist; quotas count each tenant apart; the prefix cache never
serves one tenant's prompt to another; the endpoints without a token say nothing per tenant."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csm_client import ContextTurn, SpeechClient
from csm_client.errors import quota_violations
from server.tenants import token_tenant
from server.voices.store import SUFFIX

from .harness import LoopbackServer
from .test_voices import codes_reaching_the_engine, mimi_encoder, registry_for, take, wav  # noqa: F401 (fixture)

ALICE, ALICE_2, BOB = "alice-key-1", "alice-key-2", "b0b-key"
TOKENS = (f"alice:{ALICE}", f"alice:{ALICE_2}", BOB)
BOB_TENANT = token_tenant(BOB)
SHORT_MS = 480


@contextmanager
def tenant_server(engine, mimi_encoder, directory, **voices_config):
    """A loopback server with TOKENS whose voices live in `directory`; yields (server, client per token)."""
    registry, _ = registry_for(engine, mimi_encoder, directory, **voices_config)
    server = LoopbackServer(engine, voices=registry, auth_tokens=TOKENS).start()
    try:
        with SpeechClient(server.target, token=ALICE) as alice, SpeechClient(server.target, token=ALICE_2) as alice_2, \
                SpeechClient(server.target, token=BOB) as bob:
            yield server, alice, alice_2, bob
    finally:
        server.stop()


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value


def as_if_missing(call_with_name, name: str) -> grpc.StatusCode:
    """The status of a call that names `name`, after checking that it reads exactly as the same
    call naming a voice that exists nowhere."""
    seen = refusal(lambda: call_with_name(name))
    nowhere = refusal(lambda: call_with_name("nowhere"))
    assert seen.code() is nowhere.code()
    assert seen.details() == nowhere.details().replace("nowhere", name)
    return seen.code()


def test_a_tenant_sees_only_its_own_voices(engine, mimi_encoder, tmp_path):
    with tenant_server(engine, mimi_encoder, tmp_path) as (server, alice, alice_2, bob):
        narrator = alice.create_voice("narrator", [take(tone=3.0)], timeout=120)
        alice.create_voice("zeta", [take(tone=4.0)], timeout=120)
        assert alice_2.get_voice("narrator") == narrator  # two tokens, one tenant
        assert [v.name for v in alice_2.list_voices()] == ["narrator", "zeta"]

        page = bob.list_voices_page()
        assert (list(page.voices), page.total_voices, page.total_size_bytes) == ([], 0, 0)
        for call in (lambda name: bob.get_voice(name),
                     lambda name: bob.delete_voice(name),
                     lambda name: bob.synthesize("Hi.", voice=name, max_audio_ms=SHORT_MS, timeout=60)):
            assert as_if_missing(call, "narrator") is grpc.StatusCode.NOT_FOUND
        assert not bob.delete_voice("narrator", allow_missing=True)
        for name in ("../alice/narrator", f"tenants/alice/narrator{SUFFIX}", "/narrator"):
            assert refusal(lambda: bob.get_voice(name)).code() is grpc.StatusCode.NOT_FOUND

        mine = bob.create_voice("narrator", [take(tone=9.0)], timeout=120)  # the name is free for bob
        assert mine.content_hash != narrator.content_hash
        assert alice.get_voice("narrator") == narrator and bob.get_voice("narrator") == mine
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob(f"*{SUFFIX}")) == [
            f"tenants/alice/narrator{SUFFIX}", f"tenants/alice/zeta{SUFFIX}", f"tenants/{BOB_TENANT}/narrator{SUFFIX}"]
        assert not any(BOB in p.as_posix() or ALICE in p.as_posix() for p in tmp_path.rglob("*"))  # ids, not tokens

        first = alice.list_voices_page(page_size=1)  # alice's page token, sent by bob: bob's voices after it
        assert first.next_page_token == "narrator"
        assert [v.name for v in bob.list_voices_page(first.next_page_token).voices] == []
        assert [v.name for v in bob.list_voices_page("a").voices] == ["narrator"]

        assert bob.delete_voice("narrator")
        assert alice.get_voice("narrator") == narrator


def test_quotas_count_each_tenant_apart(engine, mimi_encoder, tmp_path):
    with tenant_server(engine, mimi_encoder, tmp_path, max_voices=1) as (server, alice, alice_2, bob):
        alice.create_voice("only", [take()], timeout=120)
        error = refusal(lambda: alice_2.create_voice("second", [take()], timeout=60))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "voices" in quota_violations(error)
        bob.create_voice("only", [take()], timeout=120)
        page = bob.list_voices_page()
        assert (page.total_voices, page.max_voices) == (1, 1)


def test_the_calls_of_two_tenants_at_once_keep_their_tenants(engine, mimi_encoder, tmp_path):
    with tenant_server(engine, mimi_encoder, tmp_path) as (server, alice, alice_2, bob):
        alice.create_voice("hers", [take()], timeout=120)
        bob.create_voice("his", [take()], timeout=120)
        seen: dict[str, set[str]] = {"alice": set(), "bob": set()}

        def list_many(client, who):
            for _ in range(15):
                seen[who].update(v.name for v in client.list_voices(timeout=30))

        threads = [threading.Thread(target=list_many, args=(c, w)) for c, w in
                   ((alice, "alice"), (bob, "bob"), (alice_2, "alice"), (bob, "bob"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert seen == {"alice": {"hers"}, "bob": {"his"}}


def test_http_and_converse_use_only_the_callers_voices(engine, mimi_encoder, tmp_path, monkeypatch):
    from openai import BadRequestError, OpenAI

    with tenant_server(engine, mimi_encoder, tmp_path) as (server, alice, alice_2, bob):
        alice.create_voice("narrator", [take(speaker=2)], timeout=120)
        line = dict(model="tts-1", input="Hello over HTTP.", response_format="pcm",
                    extra_body={"seed": 9, "max_audio_ms": SHORT_MS})

        def speak_as(token: str, voice: str):
            client = OpenAI(base_url=f"{server.http_url}/v1", api_key=token, max_retries=0, timeout=120)
            return client.audio.speech.create(voice=voice, **line)

        seen = codes_reaching_the_engine(engine, monkeypatch)
        assert speak_as(ALICE_2, "narrator").content
        (context,) = seen
        assert [(s.speaker, s.text) for s in context] == [(2, "This is how I sound.")]

        refused = {}
        for name in ("narrator", "nowhere"):
            with pytest.raises(BadRequestError) as error:
                speak_as(BOB, name)
            refused[name] = error.value.body
        assert refused["narrator"]["param"] == "voice"
        assert refused["narrator"]["message"] == refused["nowhere"]["message"].replace("nowhere", "narrator")
        assert len(seen) == 1  # bob's requests never reached the engine

        def converse(client, voice):
            conv = client.converse(voice=voice, seed=3, max_audio_ms=SHORT_MS, timeout=120)
            conv.speak("One line.")
            conv.close()
            return list(conv)

        messages = converse(alice, "narrator")
        assert messages[0].HasField("started") and any(m.HasField("result") for m in messages)

        def bob_converses(name):
            converse(bob, name)

        assert as_if_missing(bob_converses, "narrator") is grpc.StatusCode.NOT_FOUND


def test_the_prefix_cache_is_never_shared_across_tenants(engine, mimi_encoder, tmp_path):
    """The same context from two tenants: the second is a miss; the first tenant again, through
    its other token, a hit. The same for two conversations opening with equal voices."""
    def counts():
        stats = engine.stats().prefix_cache
        return stats.lookups, stats.hits

    def delta(before):
        after = counts()
        return after[0] - before[0], after[1] - before[1]

    assert engine.stats().prefix_cache is not None, "the e2e engine runs with its prefix cache on"
    chunk = engine.config.prefill_chunk
    context = [ContextTurn(text="A context long enough for whole chunks.", audio=wav(seconds=6.0, tone=2.5))]

    with tenant_server(engine, mimi_encoder, tmp_path) as (server, alice, alice_2, bob):
        def say(client):
            before = counts()
            result = client.synthesize("The same words.", context=context, seed=1, max_audio_ms=SHORT_MS,
                                       timeout=120).result
            assert result.prompt_frames > 2 * chunk
            return delta(before)

        assert say(alice) == (1, 0)  # cold
        assert say(bob) == (1, 0)  # the same prompt: another tenant's, a miss
        assert say(alice_2) == (1, 1)  # alice again, with her other token: a hit
        assert say(bob) == (1, 1)  # bob's own blocks now

        take_6s = take(seconds=6.0, tone=6.5)
        alice.create_voice("host", [take_6s], timeout=120)
        bob.create_voice("host", [take_6s], timeout=120)  # the same audio: the same codes and prompt

        def converse(client):
            before = counts()
            conv = client.converse(voice="host", seed=4, max_audio_ms=SHORT_MS, timeout=120)
            conv.speak("Opening a conversation.")
            conv.close()
            assert any(m.HasField("result") for m in conv)
            return delta(before)

        assert converse(alice) == (1, 0)
        assert converse(bob) == (1, 0)
        assert converse(alice_2) == (1, 1)


def test_without_a_token_nothing_is_said_per_tenant(engine, mimi_encoder, tmp_path):
    with tenant_server(engine, mimi_encoder, tmp_path) as (server, alice, alice_2, bob):
        alice.synthesize("Some traffic first.", max_audio_ms=SHORT_MS, timeout=120)
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "csm.v1.Speech"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply == health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
            for service in ("csm.v1.Voices", "alice", BOB_TENANT):
                error = refusal(lambda: health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10))
                assert error.code() is grpc.StatusCode.NOT_FOUND
        with SpeechClient(server.target) as anonymous:
            assert refusal(lambda: anonymous.model_info(timeout=10)).code() is grpc.StatusCode.UNAUTHENTICATED
            assert refusal(lambda: anonymous.list_voices(timeout=10)).code() is grpc.StatusCode.UNAUTHENTICATED
        assert bob.model_info(timeout=10).max_slots == engine.info().limits.max_slots

        for path, body in (("/health", b'{"status":"ok"}'), ("/ready", b'{"status":"ready"}')):
            with urllib.request.urlopen(server.http_url + path, timeout=10) as response:
                assert response.read() == body
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.http_url + "/v1/models", timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(server.http_url + "/v1/models", headers={"Authorization": f"Bearer {BOB}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
