"""Blocking client of csm.v1.Speech.

    with SpeechClient("localhost:50051") as client:
        stream = client.stream("Hello there.", encoding="wav")
        for chunk in stream:          # pb.AudioChunk, as soon as the server sends it
            out.write(chunk.data)
        print(stream.result.audio_ms)
        wav_bytes = client.synthesize("Hello again.").audio   # whole WAV, exact sizes

Keyword arguments of `stream` and `synthesize` are those of csm_client.request.build_request.
Failures raise grpc.RpcError; csm_client.errors.explain turns one into a readable message.
"""

from __future__ import annotations

from collections.abc import Iterator

from csm_client.connection import Connection
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc
from csm_client.request import build_request


class SpeechStream:
    """The chunks of one Synthesize call; `result` is set once they have all arrived."""

    def __init__(self, call):
        self._call = call
        self.result: pb.SynthesisResult | None = None

    def __iter__(self) -> Iterator[pb.AudioChunk]:
        for response in self._call:
            if response.HasField("audio"):
                yield response.audio
            else:
                self.result = response.result

    def cancel(self) -> None:
        """Stops the call; the server frees the request's slot."""
        self._call.cancel()


class SpeechClient:
    def __init__(self, target: str | None = None, *, connection: Connection | None = None, **connection_options):
        """Either a Connection, or its fields as keywords (target, token, tls, ca_cert, ...)."""
        if connection is None:
            connection = Connection(**({"target": target} if target else {}), **connection_options)
        self.connection = connection
        self._channel = connection.channel()
        self._stub = speech_pb2_grpc.SpeechStub(self._channel)

    def stream(self, text: str, *, timeout: float | None = None, **options) -> SpeechStream:
        call = self._stub.Synthesize(build_request(text, **options), timeout=timeout,
                                     metadata=self.connection.metadata())
        return SpeechStream(call)

    def synthesize(self, text: str, *, timeout: float | None = None, **options) -> pb.SynthesizeUnaryResponse:
        """The whole utterance in one response (`.audio`, `.result`); WAV unless `encoding` says otherwise."""
        return self._stub.SynthesizeUnary(build_request(text, **options), timeout=timeout,
                                          metadata=self.connection.metadata())

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout, metadata=self.connection.metadata())

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SpeechClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
