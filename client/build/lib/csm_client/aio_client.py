"""asyncio client of csm.v1.Speech; the same calls as csm_client.speech_client, awaited.

    async with AsyncSpeechClient("localhost:50051") as client:
        stream = client.stream("Hello there.", encoding="opus")
        async for chunk in stream:
            out.write(chunk.data)
        print(stream.result.audio_ms)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from csm_client.connection import Connection
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc
from csm_client.request import build_request


class AsyncSpeechStream:
    """The chunks of one Synthesize call; `result` is set once they have all arrived."""

    def __init__(self, call):
        self._call = call
        self.result: pb.SynthesisResult | None = None

    async def __aiter__(self) -> AsyncIterator[pb.AudioChunk]:
        async for response in self._call:
            if response.HasField("audio"):
                yield response.audio
            else:
                self.result = response.result

    def cancel(self) -> None:
        """Stops the call; the server frees the request's slot."""
        self._call.cancel()


class AsyncSpeechClient:
    def __init__(self, target: str | None = None, *, connection: Connection | None = None, **connection_options):
        """Either a Connection, or its fields as keywords (target, token, tls, ca_cert, ...)."""
        if connection is None:
            connection = Connection(**({"target": target} if target else {}), **connection_options)
        self.connection = connection
        self._channel = connection.aio_channel()
        self._stub = speech_pb2_grpc.SpeechStub(self._channel)

    def stream(self, text: str, *, timeout: float | None = None, **options) -> AsyncSpeechStream:
        call = self._stub.Synthesize(build_request(text, **options), timeout=timeout,
                                     metadata=self.connection.metadata())
        return AsyncSpeechStream(call)

    async def synthesize(self, text: str, *, timeout: float | None = None, **options) -> pb.SynthesizeUnaryResponse:
        """The whole utterance in one response (`.audio`, `.result`); WAV unless `encoding` says otherwise."""
        return await self._stub.SynthesizeUnary(build_request(text, **options), timeout=timeout,
                                                metadata=self.connection.metadata())

    async def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return await self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout,
                                             metadata=self.connection.metadata())

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncSpeechClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
