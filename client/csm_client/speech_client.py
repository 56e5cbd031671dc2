"""Blocking client of csm.v1.Speech and csm.v1.Voices.

    with SpeechClient("localhost:50051") as client:
        stream = client.stream("Hello there.", encoding="wav")
        for chunk in stream:          # pb.AudioChunk, as soon as the server sends it
            out.write(chunk.data)
        print(stream.result.audio_ms)
        wav_bytes = client.synthesize("Hello again.").audio   # whole WAV, exact sizes
        client.create_voice("narrator", [ContextTurn.from_file("take.wav", "What the take says.")])
        client.stream("Hello in the narrator's voice.", voice="narrator")

Keyword arguments of `stream` and `synthesize` are those of csm_client.request.build_request;
`converse` takes those of csm_client.conversation.conversation_config.
Failures raise grpc.RpcError; csm_client.errors.explain turns one into a readable message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from csm_client.connection import Connection
from csm_client.conversation import Conversation, conversation_config
from csm_client.request import ContextTurn, build_request
from csm_client.voices import create_voice_request
from csm_wire import speech_pb2 as pb
from csm_wire import speech_pb2_grpc
from csm_wire import voices_pb2 as vpb
from csm_wire import voices_pb2_grpc


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
        self._voices = voices_pb2_grpc.VoicesStub(self._channel)

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

    def converse(self, *, timeout: float | None = None, **config) -> Conversation:
        """Opens a conversation (csm_client.conversation); the config is sent at once."""
        return Conversation(self._stub, conversation_config(**config), timeout=timeout,
                            metadata=self.connection.metadata())

    def create_voice(self, name: str, segments: Sequence[ContextTurn], *, description: str = "",
                     timeout: float | None = None) -> vpb.Voice:
        """Stores a voice: the server encodes the segments' audio once."""
        return self._voices.CreateVoice(create_voice_request(name, segments, description), timeout=timeout,
                                        metadata=self.connection.metadata())

    def get_voice(self, name: str, *, timeout: float | None = None) -> vpb.Voice:
        return self._voices.GetVoice(vpb.GetVoiceRequest(name=name), timeout=timeout,
                                     metadata=self.connection.metadata())

    def list_voices_page(self, page_token: str = "", *, page_size: int = 0,
                         timeout: float | None = None) -> vpb.ListVoicesResponse:
        """One page, with the server's voice storage in use and its limits."""
        return self._voices.ListVoices(vpb.ListVoicesRequest(page_size=page_size, page_token=page_token),
                                       timeout=timeout, metadata=self.connection.metadata())

    def list_voices(self, *, timeout: float | None = None) -> list[vpb.Voice]:
        """Every stored voice, in name order (all pages)."""
        voices, token = [], ""
        while True:
            page = self.list_voices_page(token, timeout=timeout)
            voices.extend(page.voices)
            if not (token := page.next_page_token):
                return voices

    def delete_voice(self, name: str, *, allow_missing: bool = False, timeout: float | None = None) -> bool:
        """True when the voice was deleted; False when there was none (only with allow_missing)."""
        return self._voices.DeleteVoice(vpb.DeleteVoiceRequest(name=name, allow_missing=allow_missing),
                                        timeout=timeout, metadata=self.connection.metadata()).deleted

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SpeechClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
