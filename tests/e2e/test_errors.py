"""Bad requests get their exact status and field-level details, and the server keeps serving."""

from __future__ import annotations

import io
import threading

import grpc
import numpy as np
import pytest
import soundfile as sf

from csm_client import SpeechClient
from csm_client.errors import field_violations, retry_after_s
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc

from .conftest import start_tiny_engine
from .harness import LoopbackServer, drain_quietly, long_audio_ms, wait_for


def wav_bytes(channels: int = 1, rate: int = 24_000) -> bytes:
    buf = io.BytesIO()
    audio = 0.3 * np.sin(np.arange(rate // 2) / 5.0)
    sf.write(buf, np.stack([audio] * channels, axis=1), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def segment(speaker=0, text="Earlier.", **audio) -> pb.Segment:
    return pb.Segment(speaker=speaker, text=text, audio=pb.AudioInput(**audio) if audio else None)


def bad_requests(info: pb.ModelInfo) -> dict[str, tuple[pb.SynthesizeRequest, str]]:
    """Case name -> (request, field path the server must blame)."""
    ok = dict(text="Fine text.", max_audio_ms=160)
    long_text = "word " * (info.max_text_chars // 5 + 1)
    return {
        "empty text": (pb.SynthesizeRequest(text=""), "text"),
        "too long text": (pb.SynthesizeRequest(text=long_text), "text"),
        "speaker out of range": (pb.SynthesizeRequest(**ok, speaker=info.max_speaker_id + 1), "speaker"),
        "context speaker out of range": (
            pb.SynthesizeRequest(**ok, context=[segment(speaker=info.max_speaker_id + 1)]), "context[0].speaker"),
        "temperature too high": (pb.SynthesizeRequest(**ok, sampling=pb.Sampling(temperature=6.0)),
                                 "sampling.temperature"),
        "temperature not a number": (pb.SynthesizeRequest(**ok, sampling=pb.Sampling(temperature=float("nan"))),
                                     "sampling.temperature"),
        "top_k zero": (pb.SynthesizeRequest(**ok, sampling=pb.Sampling(top_k=0)), "sampling.top_k"),
        "top_k too large": (pb.SynthesizeRequest(**ok, sampling=pb.Sampling(top_k=100_000)), "sampling.top_k"),
        "max_audio_ms too large": (pb.SynthesizeRequest(text="Fine.", max_audio_ms=info.max_audio_ms + 80),
                                   "max_audio_ms"),
        "prompt and max length do not fit": (
            pb.SynthesizeRequest(text=long_text[: info.max_text_chars], max_audio_ms=info.max_audio_ms,
                                 context=[segment(text=long_text[: info.max_text_chars])]
                                 * max(info.max_context_segments, 1)),
            "max_audio_ms"),
        "undecodable context audio": (pb.SynthesizeRequest(**ok, context=[segment(data=b"certainly not audio")]),
                                      "context[0].audio"),
        "stereo context audio": (pb.SynthesizeRequest(**ok, context=[segment(data=wav_bytes(channels=2))]),
                                 "context[0].audio"),
        "empty context audio": (pb.SynthesizeRequest(**ok, context=[segment(data=b"", sample_rate=1)]),
                                "context[0].audio"),
        "unknown context encoding": (pb.SynthesizeRequest(**ok, context=[segment(data=wav_bytes(), encoding=99)]),
                                     "context[0].audio.encoding"),
        "raw context audio without rate": (
            pb.SynthesizeRequest(**ok, context=[segment(data=b"\0\0" * 800, encoding=pb.AUDIO_ENCODING_PCM_S16LE)]),
            "context[0].audio.sample_rate"),
        "raw context audio at 4 kHz": (
            pb.SynthesizeRequest(**ok, context=[segment(data=b"\0\0" * 800, encoding=pb.AUDIO_ENCODING_PCM_S16LE,
                                                        sample_rate=4_000)]),
            "context[0].audio.sample_rate"),
        "opus at 16 kHz": (pb.SynthesizeRequest(**ok, output=pb.OutputFormat(
            encoding=pb.AUDIO_ENCODING_OGG_OPUS, sample_rate=16_000)), "output.sample_rate"),
        "wav at 96 kHz": (pb.SynthesizeRequest(**ok, output=pb.OutputFormat(
            encoding=pb.AUDIO_ENCODING_WAV, sample_rate=96_000)), "output.sample_rate"),
        "unknown output encoding": (pb.SynthesizeRequest(**ok, output=pb.OutputFormat(encoding=42)),
                                    "output.encoding"),
    }


CASES = [
    "empty text", "too long text", "speaker out of range", "context speaker out of range",
    "temperature too high", "temperature not a number", "top_k zero", "top_k too large",
    "max_audio_ms too large", "prompt and max length do not fit", "undecodable context audio",
    "stereo context audio", "empty context audio", "unknown context encoding", "raw context audio without rate",
    "raw context audio at 4 kHz", "opus at 16 kHz", "wav at 96 kHz", "unknown output encoding",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_invalid_argument_then_the_server_still_serves(server, client, model_info, case):
    request, field = bad_requests(model_info)[case]
    with grpc.insecure_channel(server.target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        with pytest.raises(grpc.RpcError) as streamed:
            list(stub.Synthesize(request, timeout=60))
        with pytest.raises(grpc.RpcError) as unary:
            stub.SynthesizeUnary(request, timeout=60)
    for error in (streamed.value, unary.value):
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
        violations = field_violations(error)
        assert field in violations, f"expected a violation of {field!r}, got {violations}"
        assert violations[field] and field in error.details()

    call = client.stream("And now a good one.", max_audio_ms=160, seed=3, timeout=120)
    assert list(call) and call.result.frames > 0


def test_every_case_is_listed():
    assert sorted(CASES) == sorted(bad_requests(pb.ModelInfo(max_text_chars=10)))


@pytest.fixture(scope="module")
def one_slot_server():
    engine = start_tiny_engine(max_slots=1, max_queue=1)
    server = LoopbackServer(engine).start()
    yield server
    server.stop()
    engine.shutdown()


def test_full_queue_is_resource_exhausted_with_retry_info(one_slot_server):
    with SpeechClient(one_slot_server.target) as client:
        long = dict(seed=11, max_audio_ms=long_audio_ms(client.model_info(timeout=10)), timeout=300)
        running = client.stream("I hold the only slot.", **long)
        chunks = iter(running)
        next(chunks)  # admitted: the slot is taken
        waiting = client.stream("I wait in the queue.", **long)
        waiter = threading.Thread(target=lambda: drain_quietly(waiting), daemon=True)
        waiter.start()
        wait_for(lambda: client.model_info(timeout=10).requests_waiting == 1, what="the second request to queue")

        with pytest.raises(grpc.RpcError) as refused:
            list(client.stream("No room for me.", max_audio_ms=160, timeout=60))
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after_s(refused.value) > 0
        assert "retry" in refused.value.details()

        running.cancel()
        waiting.cancel()
        waiter.join(30)
        wait_for(lambda: client.model_info(timeout=10).slots_in_use == 0, what="the slot to be freed")
        ok = client.stream("Room again.", max_audio_ms=160, seed=2, timeout=120)
        assert list(ok) and ok.result.frames > 0
