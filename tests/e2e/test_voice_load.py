"""Context audio and CreateVoice under hostile and careless clients, over a real loopback server
(the tiny engine and its real Mimi, random weights): decompression bombs refused before they
are decoded, at a few MB each, while plain requests beside them start promptly; eight
concurrent creates that leave other streams' first audio and GetVoice prompt; creations past
the queue's bound refused with RetryInfo while reads answer. Bombs and creates are sent from
another process, as an attacker's would be: this process's memory is the server's (and its
few measuring clients')."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
import sphn

from csm_client import ContextTurn, SpeechClient
from csm_client.errors import retry_after_s
from server.voices.config import VoicesConfig
from server.voices.mimi_encoder import MimiVoiceEncoder
from server.voices.registry import VoiceLimits, VoiceRegistry
from server.voices.store import VoiceStore

from .harness import LoopbackServer, wait_for

HOUR_S = 3600


@pytest.fixture(scope="module")
def mimi_encoder(engine):
    encoder = MimiVoiceEncoder(engine.parts.codec, engine.threads.torch_threads)
    yield encoder
    encoder.close()


class GatedEncoder:
    """The server's real encoder, entered only once `gate` is set; `entered` says one waits."""

    def __init__(self, inner: MimiVoiceEncoder):
        self.inner = inner
        self.gate, self.entered = threading.Event(), threading.Event()

    @property
    def codec(self) -> str:
        return self.inner.codec

    def encode(self, clips):
        self.entered.set()
        self.gate.wait(120)
        return self.inner.encode(clips)


@contextmanager
def voice_server(engine, encoder, directory, **config):
    """A loopback server whose voices live in `directory`; yields (server, client)."""
    cfg = VoicesConfig(directory=str(directory), **config)
    registry = VoiceRegistry(VoiceStore(cfg.path), VoiceLimits.for_engine(engine.info().limits, cfg), encoder,
                             engine.parts.tokenizer)
    server = LoopbackServer(engine, voices=registry).start()
    try:
        with SpeechClient(server.target) as client:
            yield server, client
    finally:
        server.stop()


def wav(seconds: float, rate: int = 16_000, tone: float = 7.0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(np.arange(int(seconds * rate)) / tone), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def flac_silence(seconds: int, rate: int = 48_000) -> bytes:
    buffer = io.BytesIO()
    minute = np.zeros(rate * 60, np.float32)
    with sf.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds // 60):
            f.write(minute)
    return buffer.getvalue()


def opus_silence(tmp_path, seconds: int) -> bytes:
    """10 s of silence encoded by sphn, its audio pages repeated: a stream sphn decodes whole."""
    path = tmp_path / "ten-seconds.opus"
    sphn.write_opus(str(path), np.zeros((1, 48_000 * 10), np.float32), 48_000)
    data, pages, pos = path.read_bytes(), [], 0
    while pos < len(data):
        size = 27 + data[pos + 26] + sum(data[pos + 27:pos + 27 + data[pos + 26]])
        pages.append(data[pos:pos + size])
        pos += size
    return b"".join(pages[:2]) + b"".join(pages[2:]) * (seconds // 10)


def proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> int:
    """Starts the peak RSS (VmHWM) again from the RSS now, and returns that RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return proc_status("VmRSS")


LOAD = """
import json, sys, threading, time
import grpc
from csm_client import ContextTurn, SpeechClient
from csm_client.errors import field_violations, retry_after_s

target, plan, rounds = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
audio = {path: open(path, "rb").read() for c in plan for _, path in c["segments"]}
out = []
for _ in range(rounds):
    results, start = [None] * len(plan), threading.Barrier(len(plan))

    def call(i, c):
        segments = [ContextTurn(text=text, audio=audio[path]) for text, path in c["segments"]]
        with SpeechClient(target) as client:
            start.wait()
            t0 = time.monotonic()
            try:
                if c["rpc"] == "create":
                    client.create_voice(c["name"], segments, timeout=300)
                else:
                    list(client.stream("Hello.", context=segments, max_audio_ms=160, timeout=300))
                results[i] = {"code": "OK"}
            except grpc.RpcError as e:
                results[i] = {"code": e.code().name, "fields": field_violations(e), "retry_after_s": retry_after_s(e)}
            results[i]["s"] = time.monotonic() - t0

    threads = [threading.Thread(target=call, args=(i, c)) for i, c in enumerate(plan)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out += results
print(json.dumps(out))
"""


def load(tmp_path, target: str, plan: list[dict], rounds: int = 1) -> subprocess.Popen:
    """Fires the plan's calls at once, `rounds` times, from another process; its stdout is JSON."""
    path = tmp_path / f"plan-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(plan))
    return subprocess.Popen([sys.executable, "-c", LOAD, target, str(path), str(rounds)], stdout=subprocess.PIPE,
                            text=True)


def results(proc: subprocess.Popen) -> list[dict]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0
    return json.loads(out)


def first_audio_s(client: SpeechClient, **options) -> float:
    """Time to the first chunk of a plain request (then cancelled)."""
    t0 = time.monotonic()
    stream = client.stream("A plain request beside them.", max_audio_ms=800, timeout=120, **options)
    next(iter(stream))
    elapsed = time.monotonic() - t0
    stream.cancel()
    return elapsed


def http_first_audio_s(server, response_format: str = "mp3") -> float:
    """Time to the first body byte of an OpenAI speech request."""
    body = json.dumps({"model": "tts-1", "input": "A plain request over HTTP.", "voice": "0",
                       "response_format": response_format, "max_audio_ms": 800})
    connection = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=120)
    try:
        t0 = time.monotonic()
        connection.request("POST", "/v1/audio/speech", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.read(1)
        return time.monotonic() - t0
    finally:
        connection.close()


def test_bombs_cost_a_few_mb_and_requests_beside_them_start_promptly(engine, mimi_encoder, tmp_path):
    flac, opus = tmp_path / "hour.flac", tmp_path / "hour.opus"
    flac.write_bytes(flac_silence(HOUR_S))
    opus.write_bytes(opus_silence(tmp_path, HOUR_S))
    ok = tmp_path / "ok.wav"
    ok.write_bytes(wav(1.0))
    attacks = {
        "Synthesize, FLAC as context[0].audio": ({"rpc": "synthesize", "segments": [["Silence.", str(flac)]]},
                                                 "context[0].audio"),
        "Synthesize, Opus as context[1].audio": ({"rpc": "synthesize", "segments": [
            ["Fine.", str(ok)], ["Silence.", str(opus)]]}, "context[1].audio"),
        "CreateVoice, FLAC as segments[1].audio": ({"rpc": "create", "name": "bomb", "segments": [
            ["Fine.", str(ok)], ["Silence.", str(flac)]]}, "segments[1].audio"),
        "CreateVoice, Opus as segments[0].audio": ({"rpc": "create", "name": "bomb", "segments": [
            ["Silence.", str(opus)]]}, "segments"),  # counting stopped at the 15.8 s a tiny voice holds
    }
    with voice_server(engine, mimi_encoder, tmp_path / "voices") as (server, client):
        client.create_voice("warm", [ContextTurn(text="Warm up.", audio=ok.read_bytes())], timeout=120)
        alone = [first_audio_s(client) for _ in range(5)]
        lines = []
        for name, (call, field) in attacks.items():
            sent = sum(len(Path(path).read_bytes()) for _, path in call["segments"])
            before = reset_peak_rss()
            got = results(load(tmp_path, server.target, [call] * 3))  # three at once
            each = (proc_status("VmHWM") - before) / len(got)
            lines.append(f"{name}: refused in {max(r['s'] for r in got) * 1000:.0f} ms, peak RSS +"
                         f"{each / 2**20:.1f} MiB each ({each / sent:.1f}x its {sent / 2**20:.1f} MiB message); "
                         f"{field}: {got[0]['fields'].get(field)}")
            for r in got:
                assert r["code"] == "INVALID_ARGUMENT" and list(r["fields"]) == [field], (name, r)
            # gRPC's buffer, the parsed message and the audio's bytes: copies of the message, and no decoding
            assert each < 4 * sent + 4 * 2**20, (name, each, sent)
        every = [call for call, _ in attacks.values()]
        attack = load(tmp_path, server.target, every * 2, rounds=10)  # 8 bombs at once, ten times
        beside = []
        while attack.poll() is None:
            beside.append(first_audio_s(client))
        refused = results(attack)
        assert {r["code"] for r in refused} == {"INVALID_ARGUMENT"} and len(beside) >= 3
    print("\nbombs, an hour of silence each, three at once:\n  " + "\n  ".join(lines))
    print(f"a plain request's first audio: alone p50 {np.median(alone) * 1000:.0f} / max {max(alone) * 1000:.0f} ms; "
          f"beside 80 bombs ({len(beside)} requests) p50 {np.median(beside) * 1000:.0f} / max "
          f"{max(beside) * 1000:.0f} ms")
    assert max(beside) < 2.0, beside


def test_eight_concurrent_creates_leave_streams_and_reads_prompt(engine, mimi_encoder, tmp_path):
    takes = [tmp_path / f"take{i}.wav" for i in range(2)]
    for i, path in enumerate(takes):
        path.write_bytes(wav(3.0, tone=5.0 + i))
    creates = [{"rpc": "create", "name": f"voice-{i}", "segments": [[f"Take {k}.", str(p)] for k, p in
                                                                      enumerate(takes)]} for i in range(8)]
    with voice_server(engine, mimi_encoder, tmp_path / "voices") as (server, client):
        client.create_voice("resident", [ContextTurn(text="Resident.", audio=takes[0].read_bytes())], timeout=120)

        def sample() -> dict[str, float]:
            t0 = time.monotonic()
            client.get_voice("resident", timeout=60)
            got = time.monotonic() - t0
            return {"opus": first_audio_s(client, encoding="ogg_opus"), "mp3": http_first_audio_s(server),
                    "GetVoice": got}

        alone = [sample() for _ in range(3)]
        t0 = time.monotonic()
        proc = load(tmp_path, server.target, creates)
        beside = []
        while proc.poll() is None:
            beside.append(sample())
            time.sleep(0.3)  # the encoder is niced: samples back to back would starve it
        created = results(proc)
        took = time.monotonic() - t0
        assert [r["code"] for r in created] == ["OK"] * 8, created
        assert len(client.list_voices()) == 9

    def figure(samples: list[dict], key: str) -> str:
        values = [s[key] * 1000 for s in samples]
        return f"p50 {np.median(values):.0f} / max {max(values):.0f} ms"

    print(f"\n8 concurrent CreateVoice (2 x 3 s of audio each) took {took:.1f} s; beside them ({len(beside)} rounds):")
    for key in ("opus", "mp3", "GetVoice"):
        print(f"  {key:8s} alone {figure(alone, key)}, beside {figure(beside, key)}")
    assert beside, "the creates ended before one sample was taken"
    assert max(s["opus"] for s in beside) < 2.0 and max(s["mp3"] for s in beside) < 2.0, beside
    assert max(s["GetVoice"] for s in beside) < 1.0, beside


def test_creates_past_the_queue_are_refused_with_retry_info_and_reads_answer(engine, mimi_encoder, tmp_path):
    """Eight creates held (one in the encoder, seven waiting): two more are refused at once with
    a retry delay, and GetVoice, ListVoices and a stream answer meanwhile."""
    encoder = GatedEncoder(mimi_encoder)
    take = ContextTurn(text="A take.", audio=wav(1.0))
    with voice_server(engine, encoder, tmp_path / "voices") as (server, client):
        encoder.gate.set()
        client.create_voice("resident", [take], timeout=120)
        encoder.gate.clear()
        encoder.entered.clear()
        outcome: dict[str, object] = {}

        def create(name: str) -> None:
            try:
                outcome[name] = client.create_voice(name, [take], timeout=120).name
            except grpc.RpcError as e:
                outcome[name] = e

        held = [threading.Thread(target=create, args=(f"held-{i}",)) for i in range(8)]
        for t in held:
            t.start()
        encoder.entered.wait(30)
        time.sleep(0.5)  # the other seven reach the queue
        t0 = time.monotonic()
        for name in ("over-0", "over-1"):
            create(name)
        refused_in = time.monotonic() - t0
        t0 = time.monotonic()
        assert client.get_voice("resident", timeout=10).name == "resident"
        assert [v.name for v in client.list_voices(timeout=10)] == ["resident"]
        reads_in = time.monotonic() - t0
        stream_in = first_audio_s(client, encoding="ogg_opus")
        encoder.gate.set()
        for t in held:
            t.join(120)
        wait_for(lambda: len(client.list_voices()) == 9, what="the eight held creates to be stored")
    print(f"\n8 creates held: 2 more refused in {refused_in * 1000:.0f} ms (retry after "
          f"{retry_after_s(outcome['over-0']):.1f} s); GetVoice + ListVoices in {reads_in * 1000:.0f} ms; "
          f"a stream's first audio in {stream_in * 1000:.0f} ms")
    for name in ("over-0", "over-1"):
        error = outcome[name]
        assert isinstance(error, grpc.RpcError) and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert retry_after_s(error) >= 1.0 and "retry in about" in error.details()
    assert all(outcome[f"held-{i}"] == f"held-{i}" for i in range(8)), outcome
    assert refused_in < 1.0 and reads_in < 1.0 and stream_in < 2.0
