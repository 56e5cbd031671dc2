"""The OpenAI-compatible HTTP API, driven by the official `openai` SDK against a real server on
127.0.0.1 (the same process, engine and event loop as gRPC). Every response format is decoded
by the ffmpeg program and its length checked against the frames the server reports."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

import openai
import pytest
from decoders import OPUS_DECODE_RATE, ffmpeg_decode, ffprobe_rate, opusinfo
from openai import OpenAI

from csm_client import SpeechClient
from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE
from server.engine.config import EngineConfig
from server.engine.engine import build

from .conftest import WARMUP_TIMEOUT_S, start_tiny_engine
from .harness import LoopbackServer, drain_quietly, long_audio_ms, wait_for

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}
# Samples a decoder returns beyond the generated ones (at 24 kHz). Streamed MP3 and ADTS carry no
# gapless header, so decoders keep the encoder's priming and the last frame's padding.
EXTRA_SAMPLES = {"mp3": (1105, 1105 + 2 * 576), "aac": (1024, 2 * 1024), "opus": (-480, 480),
                 "flac": (0, 0), "wav": (0, 0), "pcm": (0, 0)}
REQUEST = dict(model="tts-1", voice="alloy", input="Hello from the OpenAI SDK.")
SEEDED = {"seed": 4242, "max_audio_ms": 800}  # extra_body: CSM's own sampling fields


def call_json(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    """Status and JSON body of a plain HTTP request (urllib: no client library in between)."""
    request = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def sdk(base_url: str, api_key: str = "not-needed") -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return sdk(server.http_url)


def decoded_samples(data: bytes, fmt: str) -> int:
    """Samples at 24 kHz that the ffmpeg program decodes from `data`."""
    samples = len(ffmpeg_decode(data, fmt))
    return samples * SAMPLE_RATE // OPUS_DECODE_RATE if fmt == "opus" else samples


def check_length(data: bytes, fmt: str, generated: int) -> None:
    if fmt != "pcm":
        assert ffprobe_rate(data, fmt) == (OPUS_DECODE_RATE if fmt == "opus" else SAMPLE_RATE)
    low, high = EXTRA_SAMPLES[fmt]
    assert low <= decoded_samples(data, fmt) - generated <= high, (fmt, decoded_samples(data, fmt), generated)


def sse(client: OpenAI, fmt: str, **options) -> tuple[bytes, dict]:
    """The audio of an SSE stream and its `speech.audio.done` event."""
    with client.audio.speech.with_streaming_response.create(
            **REQUEST, response_format=fmt, stream_format="sse", extra_body=SEEDED, **options) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]
    *deltas, done = events
    assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert done["type"] == "speech.audio.done"
    return b"".join(base64.b64decode(e["audio"]) for e in deltas), done


def test_models_lists_the_served_names(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    assert client.models.retrieve("tts-1").id == "tts-1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("whisper-1")


@pytest.mark.parametrize("fmt", FORMATS)
def test_sse_audio_decodes_to_the_frames_the_done_event_reports(client, fmt):
    audio, done = sse(client, fmt)
    usage = done["usage"]
    assert 0 < usage["output_tokens"] <= SEEDED["max_audio_ms"] // 80
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    check_length(audio, fmt, usage["output_tokens"] * FRAME_SAMPLES)


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_and_whole_audio_decode_to_the_reported_length(client, fmt):
    _, done = sse(client, fmt)  # the same seeded request: the same frames (batch-invariant engine)
    generated = done["usage"]["output_tokens"] * FRAME_SAMPLES
    with client.audio.speech.with_streaming_response.create(
            **REQUEST, response_format=fmt, extra_body=SEEDED) as response:
        assert response.headers["content-type"].startswith(MEDIA_TYPES[fmt])
        assert response.headers["x-request-id"]
        if fmt == "flac":  # sent whole by default: one exact file (tests/e2e/test_openai_parity.py)
            assert int(response.headers["content-length"]) > 0
        else:
            assert response.headers["x-accel-buffering"] == "no"
        streamed = b"".join(response.iter_bytes())
    check_length(streamed, fmt, generated)
    whole = client.audio.speech.create(**REQUEST, response_format=fmt, extra_body=SEEDED).content
    check_length(whole, fmt, generated)


def test_voices_map_to_speakers_and_instructions_are_accepted(client):
    for voice in ("0", "1", "echo", {"id": "1"}):
        audio = client.audio.speech.create(**{**REQUEST, "voice": voice}, response_format="pcm",
                                           instructions="Speak cheerfully.", extra_body=SEEDED).content
        assert len(audio) > 0


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_stretches_the_audio(client, speed):
    _, done = sse(client, "wav")
    generated = done["usage"]["output_tokens"] * FRAME_SAMPLES
    audio = client.audio.speech.create(**REQUEST, response_format="wav", speed=speed, extra_body=SEEDED).content
    assert decoded_samples(audio, "wav") == pytest.approx(generated / speed, abs=0.1 * SAMPLE_RATE)


def test_first_bytes_leave_with_the_first_audio(client, model_info):
    start = time.monotonic()
    with client.audio.speech.with_streaming_response.create(
            **REQUEST, response_format="pcm", extra_body={"seed": 3, "max_audio_ms": 4000}) as response:
        pieces = response.iter_bytes()
        next(pieces)
        first = time.monotonic() - start
        total_bytes = sum(len(p) for p in pieces)
        end = time.monotonic() - start
    assert total_bytes > 0
    assert first < end / 2, f"first bytes after {first:.2f} s of {end:.2f} s: the response did not stream"


def test_every_violation_is_reported_at_once(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(model="tts-1", input="", voice="nobody", response_format="ogg", speed=9.0,
                                   stream_format="video")
    error = refused.value
    assert error.status_code == 400 and error.type == "invalid_request_error" and error.param == "input"
    for field in ("input:", "voice:", "response_format:", "speed:", "stream_format:"):
        assert field in error.message


def test_engine_limits_are_named_as_this_api_names_them(client, model_info):
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(**{**REQUEST, "input": "x" * (model_info.max_text_chars + 1)})
    assert refused.value.param == "input"
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(**REQUEST, extra_body={"top_k": 0})
    assert refused.value.param == "top_k"


def test_unknown_model_route_and_method_are_404_and_405(client, server):
    with pytest.raises(openai.NotFoundError) as refused:
        client.audio.speech.create(**{**REQUEST, "model": "tts-9"})
    assert refused.value.code == "model_not_found"
    status, body = call_json("GET", f"{server.http_url}/v1/audio/transcriptions")
    assert status == 404 and "Invalid URL" in body["error"]["message"]
    status, body = call_json("GET", f"{server.http_url}/v1/audio/speech")
    assert status == 405 and body["error"]["type"] == "invalid_request_error"


def test_oversized_and_malformed_bodies_are_413_and_400(server):
    url = f"{server.http_url}/v1/audio/speech"
    # The declared length is enough to refuse: the body is never read (nor, here, sent).
    connection = HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)
    connection.putrequest("POST", "/v1/audio/speech")
    connection.putheader("content-type", "application/json")
    connection.putheader("content-length", str(2 * 1024 * 1024))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"
    connection.close()
    status, body = call_json("POST", url, b"{not json")
    assert status == 400 and body["error"]["param"] == "body"


def test_health_ready_and_http_metrics(client, server):
    assert call_json("GET", f"{server.http_url}/health") == (200, {"status": "ok"})
    assert call_json("GET", f"{server.http_url}/ready") == (200, {"status": "ready"})
    before = server.metrics()
    client.audio.speech.create(**REQUEST, response_format="pcm", extra_body=SEEDED)
    call_json("GET", f"{server.http_url}/no/such/path")
    ok = 'csm:http_requests_total{route="/v1/audio/speech",status="200"}'
    unmatched = 'csm:http_requests_total{route="unmatched",status="404"}'

    def counted():
        now = server.metrics()
        return now if now.get(ok, 0) > before.get(ok, 0) and now.get(unmatched, 0) > before.get(unmatched, 0) else None

    after = wait_for(counted, what="the HTTP requests to be counted")
    for series in ("csm:request_queue_time_seconds_count", "csm:e2e_request_latency_seconds_count",
                   "csm:request_real_time_factor_count", "csm:request_prompt_positions_count",
                   "csm:prompt_positions_total", "csm:time_to_first_audio_seconds_count"):
        assert after[series] > before.get(series, 0), series
    assert after["process_cpu_seconds_total"] > 0 and after["process_resident_memory_bytes"] > 0


def test_bearer_tokens_guard_the_api_but_not_health(engine):
    server = LoopbackServer(engine, auth_tokens=("s3cret",)).start()
    try:
        with pytest.raises(openai.AuthenticationError) as refused:
            sdk(server.http_url, api_key="wrong").models.list()
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
        status, body = call_json("POST", f"{server.http_url}/v1/audio/speech", json.dumps(REQUEST).encode())
        assert status == 401 and "token" in body["error"]["message"]
        assert [m.id for m in sdk(server.http_url, api_key="s3cret").models.list().data][0] == "tiny"
        audio = sdk(server.http_url, api_key="s3cret").audio.speech.create(
            **REQUEST, response_format="pcm", extra_body=SEEDED).content
        assert len(audio) > 0
        assert call_json("GET", f"{server.http_url}/health")[0] == 200
        assert call_json("GET", f"{server.http_url}/ready")[0] == 200
    finally:
        server.stop()


def test_full_queue_is_429_with_retry_after():
    engine = start_tiny_engine(max_slots=1, max_queue=1)
    server = LoopbackServer(engine).start()
    try:
        with SpeechClient(server.target) as grpc_client:
            long = dict(seed=11, max_audio_ms=long_audio_ms(grpc_client.model_info(timeout=10)), timeout=300)
            running = grpc_client.stream("I hold the only slot.", **long)
            next(iter(running))
            waiting = grpc_client.stream("I wait in the queue.", **long)
            threading.Thread(target=drain_quietly, args=(waiting,), daemon=True).start()
            wait_for(lambda: grpc_client.model_info(timeout=10).requests_waiting == 1, what="a queued request")
            with pytest.raises(openai.RateLimitError) as refused:
                sdk(server.http_url).audio.speech.create(**REQUEST)
            headers = refused.value.response.headers
            assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0
            assert refused.value.code == "rate_limit_exceeded"
            running.cancel()
            waiting.cancel()
    finally:
        server.stop()
        engine.shutdown()


def test_503_while_warming_up_and_while_draining():
    config = EngineConfig(model="tiny", device="cpu", dtype="float32", watermark=False, max_slots=2, max_queue=4)
    engine = build(config)  # not started: warming up
    server = LoopbackServer(engine, drain_grace_s=60).start()
    try:
        ready = f"{server.http_url}/ready"
        assert call_json("GET", ready) == (503, {"status": "warming up"})
        with pytest.raises(openai.InternalServerError) as refused:
            sdk(server.http_url).audio.speech.create(**REQUEST)
        assert refused.value.status_code == 503

        engine.start()
        assert engine.wait_ready(WARMUP_TIMEOUT_S)
        wait_for(lambda: call_json("GET", ready)[0] == 200, what="/ready to turn 200")
        with sdk(server.http_url).audio.speech.with_streaming_response.create(
                **REQUEST, response_format="pcm", extra_body={"seed": 5, "max_audio_ms": 4000}) as running:
            pieces = running.iter_bytes()
            next(pieces)
            draining = server.run_in_background(server.server.drain())
            wait_for(lambda: call_json("GET", ready) == (503, {"status": "draining"}), what="/ready to say draining")
            with pytest.raises(openai.InternalServerError) as refused:
                sdk(server.http_url).audio.speech.create(**REQUEST)
            assert refused.value.status_code == 503 and "shutting down" in refused.value.message
            rest = b"".join(pieces)  # the stream in flight finishes during the drain
        assert len(rest) > 0
        assert draining.result(timeout=120) is True
    finally:
        server.stop()
        engine.shutdown()


def test_the_docs_curl_examples_work_as_written(server, tmp_path):
    """The curl commands of README.md and docs/api.md that write a file, run by bash as written
    (host, port and token replaced)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    root = Path(__file__).resolve().parents[2]
    commands = []
    for doc in (root / "README.md", root / "docs" / "api.md"):
        text = doc.read_text().replace("\\\n", " ")
        commands += [line.strip() for line in text.splitlines()
                     if line.strip().startswith("curl ") and "/v1/audio/speech" in line and " -o " in line]
    assert len(commands) >= 2
    for command in commands:
        command = (command.replace("http://localhost:8000", server.http_url)
                   .replace(' -H "Authorization: Bearer $CSM_TOKEN"', ""))
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        name = command.split(" -o ")[1].split()[0]
        data = (tmp_path / name).read_bytes()
        fmt = name.rsplit(".", 1)[1]
        if fmt == "opus":
            opusinfo(data)
        assert len(ffmpeg_decode(data, fmt)) > 0, command
