"""A corpus of malformed requests, sent as raw bytes and as messages: every one gets
INVALID_ARGUMENT naming the field at fault (never UNKNOWN or INTERNAL, never a traceback in
the log), and the server keeps serving. Together with tests/e2e/test_errors.py: > 40 cases."""

from __future__ import annotations

import logging
import struct

import grpc
import numpy as np
import pytest

from csm_client.errors import field_violations
from csm_wire import speech_pb2 as pb
from csm_wire import voices_pb2 as vpb

from .conftest import start_tiny_engine
from .harness import LoopbackServer

BAD_UTF8 = b"ok \xc3\x28 \xff"  # an invalid 2-byte sequence and a byte that never starts one


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages) on the wire."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


OK = field(1, b"Fine text.")  # SynthesizeRequest.text
OK_SEGMENT = field(2, b"Earlier.")  # Segment.text

SYNTHESIZE = "/csm.v1.Speech/Synthesize"
UNARY = "/csm.v1.Speech/SynthesizeUnary"
INFO = "/csm.v1.Speech/GetModelInfo"
CREATE_VOICE = "/csm.v1.Voices/CreateVoice"
GET_VOICE = "/csm.v1.Voices/GetVoice"
DELETE_VOICE = "/csm.v1.Voices/DeleteVoice"
LIST_VOICES = "/csm.v1.Voices/ListVoices"

# name -> (method, request bytes, the fields the server must blame)
RAW: dict[str, tuple[str, bytes, set[str]]] = {
    "garbage bytes": (SYNTHESIZE, b"\xff\xff\xff\xff\xff", {"(request)"}),
    "truncated varint": (SYNTHESIZE, b"\x0a", {"(request)"}),
    "length past the end": (SYNTHESIZE, b"\x0a\x10abc", {"(request)"}),
    "varint longer than 10 bytes": (SYNTHESIZE, b"\x08" + b"\xff" * 11, {"(request)"}),
    "text not UTF-8": (SYNTHESIZE, field(1, BAD_UTF8), {"text"}),
    "request_id not UTF-8": (SYNTHESIZE, OK + field(7, BAD_UTF8), {"request_id"}),
    "voice not UTF-8": (SYNTHESIZE, OK + field(8, BAD_UTF8), {"voice"}),
    "context text not UTF-8": (SYNTHESIZE, OK + field(3, field(2, BAD_UTF8)), {"context[0].text"}),
    "second context text not UTF-8": (SYNTHESIZE, OK + field(3, OK_SEGMENT) + field(3, field(2, BAD_UTF8)),
                                      {"context[1].text"}),
    "text and context text not UTF-8": (SYNTHESIZE, field(1, BAD_UTF8) + field(3, field(2, BAD_UTF8)),
                                        {"text", "context[0].text"}),
    "unary text not UTF-8": (UNARY, field(1, BAD_UTF8), {"text"}),
    "unary garbage bytes": (UNARY, b"\x07\x07\x07", {"(request)"}),
    "model info garbage bytes": (INFO, b"\xff\xff", {"(request)"}),
    "voice name not UTF-8": (CREATE_VOICE, field(1, BAD_UTF8) + field(2, OK_SEGMENT), {"name"}),
    "voice segment text not UTF-8": (CREATE_VOICE, field(1, b"v") + field(2, field(2, BAD_UTF8)), {"segments[0].text"}),
    "voice description not UTF-8": (CREATE_VOICE, field(1, b"v") + field(2, OK_SEGMENT) + field(3, BAD_UTF8),
                                    {"description"}),
    "get voice name not UTF-8": (GET_VOICE, field(1, BAD_UTF8), {"name"}),
    "delete voice name not UTF-8": (DELETE_VOICE, field(1, BAD_UTF8), {"name"}),
    "list voices page token not UTF-8": (LIST_VOICES, field(2, BAD_UTF8), {"page_token"}),
    "create voice garbage bytes": (CREATE_VOICE, b"\xff\xfe\xfd", {"(request)"}),
}


def audio(data: bytes, encoding=pb.AUDIO_ENCODING_UNSPECIFIED, rate: int = 0) -> pb.AudioInput:
    return pb.AudioInput(data=data, encoding=encoding, sample_rate=rate)


def with_context(*segments: pb.Segment, **kw) -> pb.SynthesizeRequest:
    return pb.SynthesizeRequest(text="Fine text.", max_audio_ms=160, context=list(segments), **kw)


def pcm16(seconds: float, rate: int) -> bytes:
    return np.zeros(int(seconds * rate), "<i2").tobytes()


def messages(info: pb.ModelInfo) -> dict[str, tuple[pb.SynthesizeRequest, set[str]]]:
    """name -> (a well-formed message breaking the rules, the fields the server must blame)."""
    too_long_s = info.max_context_segments and 121.0
    nan = np.array([0.1, np.nan, 0.2], "<f4").tobytes()
    return {
        "request_id too long": (pb.SynthesizeRequest(text="Hi.", request_id="r" * 129), {"request_id"}),
        "request_id with a newline": (pb.SynthesizeRequest(text="Hi.", request_id="a\r\nforged log line"),
                                      {"request_id"}),
        "whitespace text": (pb.SynthesizeRequest(text=" \n\t "), {"text"}),
        "no fields at all": (pb.SynthesizeRequest(), {"text"}),
        "context text too long": (with_context(pb.Segment(text="x" * (info.max_text_chars + 1))), {"context[0].text"}),
        "context text blank": (with_context(pb.Segment(text="  ")), {"context[0].text"}),
        "too many segments": (with_context(*[pb.Segment(text="t")] * (info.max_context_segments + 1)), {"context"}),
        "speaker at uint32 max": (pb.SynthesizeRequest(text="Hi.", speaker=2**32 - 1), {"speaker"}),
        "negative temperature": (pb.SynthesizeRequest(text="Hi.", sampling=pb.Sampling(temperature=-1.0)),
                                 {"sampling.temperature"}),
        "infinite temperature": (pb.SynthesizeRequest(text="Hi.", sampling=pb.Sampling(temperature=float("inf"))),
                                 {"sampling.temperature"}),
        "max_audio_ms below a frame": (pb.SynthesizeRequest(text="Hi.", max_audio_ms=79), {"max_audio_ms"}),
        "pcm output at 7999 Hz": (pb.SynthesizeRequest(text="Hi.", output=pb.OutputFormat(
            encoding=pb.AUDIO_ENCODING_PCM_S16LE, sample_rate=7999)), {"output.sample_rate"}),
        "raw context rate too high": (with_context(pb.Segment(text="t", audio=audio(
            pcm16(0.1, 8000), pb.AUDIO_ENCODING_PCM_S16LE, 200_001))), {"context[0].audio.sample_rate"}),
        "raw f32 context with NaN": (with_context(pb.Segment(text="t", audio=audio(
            nan, pb.AUDIO_ENCODING_PCM_F32LE, 16_000))), {"context[0].audio"}),
        "raw s16 context of odd length": (with_context(pb.Segment(text="t", audio=audio(
            b"\0\0\0", pb.AUDIO_ENCODING_PCM_S16LE, 16_000))), {"context[0].audio"}),
        "raw context too long": (with_context(pb.Segment(text="t", audio=audio(
            pcm16(too_long_s, 8000), pb.AUDIO_ENCODING_PCM_S16LE, 8000))), {"context[0].audio"}),
        "truncated WAV header": (with_context(pb.Segment(text="t", audio=audio(b"RIFF\x24\x00\x00\x00WAVEfmt "))),
                                 {"context[0].audio"}),
        "Ogg page of junk": (with_context(pb.Segment(text="t", audio=audio(b"OggS" + b"\x00" * 40))),
                             {"context[0].audio"}),
        "several problems at once": (pb.SynthesizeRequest(text="", speaker=99, sampling=pb.Sampling(top_k=0),
                                                          output=pb.OutputFormat(encoding=42)),
                                     {"text", "speaker", "sampling.top_k", "output.encoding"}),
    }


@pytest.fixture(scope="module")
def voiced_server(tmp_path_factory):
    """The tiny engine behind a server that also serves csm.v1.Voices."""
    from server.voices.config import VoicesConfig
    from server.voices.mimi_encoder import open_registry

    engine = start_tiny_engine()
    voices = open_registry(engine, VoicesConfig(directory=str(tmp_path_factory.mktemp("voices"))))
    server = LoopbackServer(engine, voices).start()
    yield server
    server.stop()
    engine.shutdown()


def expect_invalid(error: grpc.RpcError, fields: set[str]) -> None:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    violations = field_violations(error)
    assert fields <= set(violations), f"expected violations of {fields}, got {violations}"
    assert "<class" not in error.details() and "Traceback" not in error.details()  # no Python internals


def call_raw(channel: grpc.Channel, method: str, data: bytes):
    if method == SYNTHESIZE:
        return list(channel.unary_stream(method)(data, timeout=60))
    return channel.unary_unary(method)(data, timeout=60)


@pytest.mark.parametrize("case", sorted(RAW))
def test_bytes_that_do_not_parse_are_invalid_argument(voiced_server, case, caplog):
    method, data, fields = RAW[case]
    with caplog.at_level(logging.WARNING), grpc.insecure_channel(voiced_server.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            call_raw(channel, method, data)
    expect_invalid(raised.value, fields)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a malformed request logged an error"


def test_rule_breaking_messages_are_invalid_argument_and_the_server_serves_on(voiced_server, caplog):
    with grpc.insecure_channel(voiced_server.target) as channel:
        info = channel.unary_unary(INFO, request_serializer=pb.GetModelInfoRequest.SerializeToString,
                                   response_deserializer=pb.ModelInfo.FromString)(pb.GetModelInfoRequest(), timeout=10)
        cases = messages(info)
        synthesize = channel.unary_stream(SYNTHESIZE, request_serializer=pb.SynthesizeRequest.SerializeToString,
                                          response_deserializer=pb.SynthesizeResponse.FromString)
        with caplog.at_level(logging.WARNING):
            for name, (request, fields) in cases.items():
                with pytest.raises(grpc.RpcError) as raised:
                    list(synthesize(request, timeout=60))
                try:
                    expect_invalid(raised.value, fields)
                except AssertionError as e:
                    raise AssertionError(f"case {name!r}: {e}") from None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        fine = list(synthesize(pb.SynthesizeRequest(text="Still serving.", max_audio_ms=160), timeout=120))
        assert fine[-1].HasField("result") and fine[-1].result.frames > 0
    assert len(cases) + len(RAW) >= 39  # with the 19 cases of test_errors.py, more than 40 in all


def test_the_corpus_is_large_enough():
    from .test_errors import CASES

    assert len(RAW) + len(messages(pb.ModelInfo(max_text_chars=10, max_context_segments=2))) + len(CASES) >= 40
    assert struct.calcsize("<h") == 2  # raw PCM cases above are 16-bit
