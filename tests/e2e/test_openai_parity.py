"""OpenAI parity of the HTTP API, checked with the official `openai` SDK against a real server:
custom voices (POST/GET/DELETE /v1/audio/voices) on csm.v1.Voices' registry, exact files read by
independent readers (Python's wave, soundfile, ffprobe, the flac program), x-request-id on every
response, OpenAI's input limit, and the default length a request gets from its text."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import urllib.parse
import wave
from contextlib import contextmanager
from http.client import HTTPConnection

import numpy as np
import openai
import pytest
import soundfile as sf
from openai import OpenAI

from csm_client import SpeechClient
from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE
from server.engine import rules

from .harness import LoopbackServer
from .test_voices import codes_reaching_the_engine, mimi_encoder, registry_for, wav  # noqa: F401 (a fixture)

SEEDED = {"seed": 77, "max_audio_ms": 800}
SPEECH = dict(model="tts-1", voice="0", input="Exact files, please.")


@contextmanager
def running(server: LoopbackServer):
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sdk(server, api_key: str = "none") -> OpenAI:
    return OpenAI(base_url=f"{server.http_url}/v1", api_key=api_key, max_retries=0, timeout=120)


def http(method: str, url: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of a plain HTTP request (http.client). A server
    may answer before it has read the whole body (413) and close: the pipe breaks under the
    sender, and the answer is read all the same."""
    parts = urllib.parse.urlsplit(url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        try:
            connection.request(method, parts.path or "/", body=body or None, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the answer, if the server sent one, is still in the socket
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def generated_samples(client: OpenAI, fmt: str) -> int:
    """Samples the seeded request generates, from its SSE `speech.audio.done` usage."""
    with client.audio.speech.with_streaming_response.create(
            **SPEECH, response_format=fmt, stream_format="sse", extra_body=SEEDED) as response:
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    return events[-1]["usage"]["output_tokens"] * FRAME_SAMPLES


def ffprobe_samples(path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_entries", "stream=duration_ts",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.strip().split(",")[0])


# -- exact files ---------------------------------------------------------------------------
def test_a_wav_sent_whole_carries_its_real_sizes(server, tmp_path):
    client = sdk(server)
    generated = generated_samples(client, "wav")
    data = client.audio.speech.create(**SPEECH, response_format="wav", extra_body={**SEEDED, "stream": False}).content
    riff, data_size = struct.unpack_from("<I", data, 4)[0], struct.unpack_from("<I", data, 40)[0]
    assert (riff, data_size) == (len(data) - 8, len(data) - 44) == (36 + 2 * generated, 2 * generated)
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnframes(), reader.getframerate(), reader.getnchannels()) == (generated, SAMPLE_RATE, 1)
    assert sf.info(io.BytesIO(data)).frames == generated
    (tmp_path / "whole.wav").write_bytes(data)
    assert ffprobe_samples(tmp_path / "whole.wav") == generated


def test_a_streamed_wav_says_its_sizes_are_unknown(server):
    """The default for wav: audio as it comes, its sizes 0xFFFFFFFF (docs/api.md, Output formats)."""
    data = sdk(server).audio.speech.create(**SPEECH, response_format="wav", extra_body=SEEDED).content
    assert struct.unpack_from("<I", data, 4)[0] == struct.unpack_from("<I", data, 40)[0] == 0xFFFFFFFF


def test_flac_is_one_exact_file_that_every_reader_reads(server, tmp_path):
    client = sdk(server)
    generated = generated_samples(client, "flac")
    data = client.audio.speech.create(**SPEECH, response_format="flac", extra_body=SEEDED).content
    path = tmp_path / "whole.flac"
    path.write_bytes(data)
    samples, rate = sf.read(path, dtype="int16")  # libsndfile: refuses a FLAC without its total length
    assert (len(samples), rate, sf.info(path).frames) == (generated, SAMPLE_RATE, generated)
    assert ffprobe_samples(path) == generated
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"], capture_output=True,
                             check=True).stdout
    assert np.array_equal(np.frombuffer(decoded, "<i2"), samples)
    if shutil.which("flac") is None:
        pytest.skip("the flac program is not installed (apt-get install flac): its checks were skipped")
    subprocess.run(["flac", "-t", "-s", str(path)], check=True)  # decodes, and checks the STREAMINFO MD5
    info = subprocess.run(["metaflac", "--show-total-samples", str(path)], capture_output=True, text=True, check=True)
    assert int(info.stdout) == generated


def test_flac_streams_when_asked(server):
    """`stream: true`: FLAC as it is generated, whose STREAMINFO gives no total (docs/api.md):
    ffmpeg decodes it to the generated length, libsndfile (soundfile) cannot read it."""
    client = sdk(server)
    generated = generated_samples(client, "flac")
    data = client.audio.speech.create(**SPEECH, response_format="flac", extra_body={**SEEDED, "stream": True}).content
    assert struct.unpack_from(">Q", data, 4 + 4 + 10)[0] & (2**36 - 1) == 0  # STREAMINFO total samples: unknown
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-f", "flac", "-i", "-", "-f", "s16le", "-"], input=data,
                             capture_output=True, check=True).stdout
    assert len(decoded) == 2 * generated


# -- x-request-id ----------------------------------------------------------------------------
def test_every_response_carries_x_request_id(server):
    base = server.http_url
    json_headers = {"content-type": "application/json"}
    speech = json.dumps({**SPEECH, "response_format": "pcm", **SEEDED}).encode()
    calls = {
        "200 speech": ("POST", "/v1/audio/speech", speech),
        "400 bad json": ("POST", "/v1/audio/speech", b"{"),
        "400 bad field": ("POST", "/v1/audio/speech", json.dumps({**SPEECH, "speed": 9}).encode()),
        "404 model": ("GET", "/v1/models/nope", b""),
        "404 route": ("GET", "/v1/nowhere", b""),
        "405 method": ("GET", "/v1/audio/speech", b""),
        "413 body": ("POST", "/v1/audio/speech", b"x" * (1024 * 1024 + 1)),
        "501 no voices": ("GET", "/v1/audio/voices", b""),
        "200 health": ("GET", "/health", b""),
    }
    for what, (method, path, body) in calls.items():
        status, headers, _ = http(method, base + path, body, json_headers)
        assert status == int(what.split()[0]), (what, status)
        assert len(headers.get("x-request-id", "")) >= 16, (what, headers)
        status, headers, _ = http(method, base + path, body, {**json_headers, "x-request-id": f"mine-{status}"})
        assert headers["x-request-id"] == f"mine-{status}", what
    with running(LoopbackServer(server._engine, auth_tokens=("s3cret",))) as guarded:
        status, headers, body = http("GET", f"{guarded.http_url}/v1/models", headers={"x-request-id": "who"})
        assert (status, headers["x-request-id"]) == (401, "who")
        assert json.loads(body)["error"]["code"] == "invalid_api_key"


# -- limits as OpenAI documents them -----------------------------------------------------------
def test_input_is_limited_to_openais_4096_characters(server, model_info):
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(**{**SPEECH, "input": "x" * 4097})
    assert refused.value.param == "input" and "at most 4096" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(**SPEECH, speed=4.5)
    assert refused.value.param == "speed" and refused.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(**SPEECH, extra_body={"stream": "yes"})
    assert refused.value.param == "stream"


# -- the default length ------------------------------------------------------------------------
def test_without_max_audio_ms_the_length_follows_the_text(server, model_info):
    """Random weights never end an utterance: the default bound is all that stops it."""
    text = "Hello from CSM."
    bound_ms = rules.DEFAULT_FLOOR_MS + rules.DEFAULT_MS_PER_CHAR * len(text)
    assert bound_ms <= 5_000
    events = []
    with sdk(server).audio.speech.with_streaming_response.create(
            model="tts-1", voice="0", input=text, response_format="pcm", stream_format="sse",
            extra_body={"seed": 1}) as response:
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]
    frames = events[-1]["usage"]["output_tokens"]
    assert frames * 80 == bound_ms // 80 * 80
    with SpeechClient(server.target) as client:  # csm.v1 gets the same bound
        assert client.synthesize(text, seed=1, timeout=120).result.frames == frames
        longer = client.synthesize(text * 2, seed=1, timeout=120).result.frames
    assert frames < longer <= model_info.default_max_audio_ms // 80


# -- custom voices -------------------------------------------------------------------------------
def test_custom_voices_over_http_with_the_openai_sdk(engine, mimi_encoder, tmp_path, monkeypatch):  # noqa: F811
    registry, encoder = registry_for(engine, mimi_encoder, tmp_path)
    with running(LoopbackServer(engine, voices=registry)) as server:
        client = sdk(server)
        sample = ("take.wav", wav(seconds=1.0), "audio/wav")
        voice = client.audio.voices.create(name="narrator", audio_sample=sample, consent="cons_none",
                                           extra_body={"transcript": "This is how I sound.", "speaker": "2"})
        assert (voice.id, voice.name, voice.object, voice.type) == ("narrator", "narrator", "audio.voice",
                                                                   "audio_sample")
        assert encoder.calls == 1
        with SpeechClient(server.target) as grpc_client:  # csm.v1.Voices sees the same voice
            stored = grpc_client.get_voice("narrator", timeout=30)
            assert [(s.speaker, s.text) for s in stored.segments] == [(2, "This is how I sound.")]

        listed = client.get("/audio/voices", cast_to=object)
        assert [v["id"] for v in listed["data"]] == ["narrator"] and listed["has_more"] is False
        assert client.get("/audio/voices/narrator", cast_to=object)["audio_ms"] == stored.audio_ms

        seen = codes_reaching_the_engine(engine, monkeypatch)
        for name in ("narrator", {"id": "narrator"}):
            audio = client.audio.speech.create(model="tts-1", voice=name, input="Now in my voice.",
                                               response_format="pcm", extra_body=SEEDED).content
            assert len(audio) > 0
        assert [[(s.speaker, s.text) for s in context] for context in seen] == [[(2, "This is how I sound.")]] * 2

        with pytest.raises(openai.ConflictError):
            client.audio.voices.create(name="narrator", audio_sample=sample, consent="c",
                                       extra_body={"transcript": "Again."})
        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.voices.create(name="broken", audio_sample=("x.wav", b"not audio", "audio/wav"), consent="c",
                                       extra_body={"transcript": "Hi."})
        assert refused.value.param == "audio_sample"
        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.voices.create(name="Bad Name!", audio_sample=sample, consent="c")
        assert refused.value.param == "name" and "transcript" in refused.value.message  # every problem at once
        assert encoder.calls == 1  # nothing refused reached the encoder

        deleted = client.audio.voices.delete("narrator")
        assert (deleted.id, deleted.deleted, deleted.object) == ("narrator", True, "audio.voice.deleted")
        with pytest.raises(openai.NotFoundError):
            client.audio.voices.delete("narrator")
        assert client.get("/audio/voices", cast_to=object)["data"] == []


def test_voices_are_the_tenants_own(engine, mimi_encoder, tmp_path):  # noqa: F811
    registry, _ = registry_for(engine, mimi_encoder, tmp_path)
    with running(LoopbackServer(engine, voices=registry, auth_tokens=("alice:a-token", "bob:b-token"))) as server:
        alice, bob = sdk(server, "a-token"), sdk(server, "b-token")
        alice.audio.voices.create(name="mine", audio_sample=("t.wav", wav(), "audio/wav"), consent="c",
                                  extra_body={"transcript": "This is how I sound."})
        assert [v["id"] for v in alice.get("/audio/voices", cast_to=object)["data"]] == ["mine"]
        assert bob.get("/audio/voices", cast_to=object)["data"] == []
        with pytest.raises(openai.NotFoundError):
            bob.audio.voices.delete("mine")
        with pytest.raises(openai.BadRequestError) as refused:  # bob's `voice` cannot name alice's voice
            bob.audio.speech.create(model="tts-1", voice="mine", input="Hi.", response_format="pcm")
        assert refused.value.param == "voice"
