"""Building a csm.v1 SynthesizeRequest from plain Python values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from csm_wire import speech_pb2 as pb

ENCODINGS = {
    "wav": pb.AUDIO_ENCODING_WAV,
    "pcm": pb.AUDIO_ENCODING_PCM_S16LE,
    "pcm_s16le": pb.AUDIO_ENCODING_PCM_S16LE,
    "pcm_f32le": pb.AUDIO_ENCODING_PCM_F32LE,
    "opus": pb.AUDIO_ENCODING_OGG_OPUS,
    "ogg_opus": pb.AUDIO_ENCODING_OGG_OPUS,
}


def encoding_of(name: str) -> int:
    try:
        return ENCODINGS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown audio encoding {name!r}; use one of {', '.join(ENCODINGS)}") from None


@dataclass(slots=True, frozen=True)
class ContextTurn:
    """An earlier turn of the conversation: its transcript, speaker and (optionally) audio."""

    text: str
    speaker: int = 0
    audio: bytes | None = None  # encoded audio; a container (WAV/FLAC/Ogg) unless `encoding` says raw PCM
    encoding: str | None = None  # None: detected by the server; "pcm_s16le" / "pcm_f32le" need sample_rate
    sample_rate: int = 0

    @classmethod
    def from_file(cls, path: str | Path, text: str, speaker: int = 0) -> ContextTurn:
        return cls(text=text, speaker=speaker, audio=Path(path).read_bytes())

    def to_proto(self) -> pb.Segment:
        segment = pb.Segment(speaker=self.speaker, text=self.text)
        if self.audio is not None:
            segment.audio.CopyFrom(pb.AudioInput(
                data=self.audio,
                encoding=encoding_of(self.encoding) if self.encoding else pb.AUDIO_ENCODING_UNSPECIFIED,
                sample_rate=self.sample_rate,
            ))
        return segment


def build_request(
    text: str,
    *,
    speaker: int = 0,
    context: Sequence[ContextTurn] = (),
    encoding: str = "wav",
    sample_rate: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    max_audio_ms: int = 0,
    request_id: str = "",
) -> pb.SynthesizeRequest:
    """Unset sampling values take the server's defaults; sample_rate 0 is the model's 24 kHz."""
    sampling = pb.Sampling()
    if temperature is not None:
        sampling.temperature = temperature
    if top_k is not None:
        sampling.top_k = top_k
    if seed is not None:
        sampling.seed = seed
    return pb.SynthesizeRequest(
        text=text,
        speaker=speaker,
        context=[turn.to_proto() for turn in context],
        sampling=sampling,
        max_audio_ms=max_audio_ms,
        output=pb.OutputFormat(encoding=encoding_of(encoding), sample_rate=sample_rate),
        request_id=request_id,
    )
