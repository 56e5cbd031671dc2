"""A csm.v1 SynthesizeRequest as the engine sees it, with the checks that belong to the wire.

The engine checks what depends on the model (text length, speaker range, sampling values,
prompt fit) when the request is submitted; this module checks encodings and sample rates and
decodes context audio. Every problem becomes a Violation with the request's field path.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csm_wire import speech_pb2 as pb
from csm_core.audio_io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioDecodeError, decode_audio
from csm_core.constants import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, SAMPLE_RATE
from server.audio_encoding import OutputEncoding, rate_rule, supported_rate
from server.engine.types import ContextSegment, InvalidRequest, SynthesisParams, Violation

OUTPUT_ENCODINGS = {
    pb.AUDIO_ENCODING_UNSPECIFIED: OutputEncoding.PCM_S16LE,
    pb.AUDIO_ENCODING_PCM_S16LE: OutputEncoding.PCM_S16LE,
    pb.AUDIO_ENCODING_PCM_F32LE: OutputEncoding.PCM_F32LE,
    pb.AUDIO_ENCODING_WAV: OutputEncoding.WAV,
    pb.AUDIO_ENCODING_OGG_OPUS: OutputEncoding.OGG_OPUS,
}
# What csm_core.audio_io.decode_audio calls each input encoding.
INPUT_ENCODINGS = {
    pb.AUDIO_ENCODING_UNSPECIFIED: "auto",
    pb.AUDIO_ENCODING_PCM_S16LE: "pcm_s16le",
    pb.AUDIO_ENCODING_PCM_F32LE: "pcm_f32le",
    pb.AUDIO_ENCODING_WAV: "wav",
    pb.AUDIO_ENCODING_OGG_OPUS: "ogg_opus",
}
RAW_INPUT_ENCODINGS = (pb.AUDIO_ENCODING_PCM_S16LE, pb.AUDIO_ENCODING_PCM_F32LE)


@dataclass(slots=True, frozen=True)
class ParsedRequest:
    params: SynthesisParams
    encoding: OutputEncoding
    sample_rate: int  # output rate (Hz)


def has_context_audio(request: pb.SynthesizeRequest) -> bool:
    """Whether parsing will decode audio (worth doing off the event loop)."""
    return any(seg.HasField("audio") for seg in request.context)


def parse_request(request: pb.SynthesizeRequest, request_id: str) -> ParsedRequest:
    """Raises InvalidRequest listing every wire-level problem at once."""
    violations: list[Violation] = []
    encoding = OUTPUT_ENCODINGS.get(request.output.encoding)
    sample_rate = request.output.sample_rate or SAMPLE_RATE
    if encoding is None:
        violations.append(Violation(
            "output.encoding",
            f"unknown encoding {request.output.encoding}; use PCM_S16LE, PCM_F32LE, WAV or OGG_OPUS"))
    elif not supported_rate(encoding, sample_rate):
        violations.append(Violation(
            "output.sample_rate", f"{sample_rate} Hz is not supported: {rate_rule(encoding)} (0 means 24000)"))

    context: list[ContextSegment] = []
    for i, segment in enumerate(request.context):
        audio, rate = None, SAMPLE_RATE
        if segment.HasField("audio"):
            decoded = _decode_context_audio(segment.audio, f"context[{i}].audio")
            if isinstance(decoded, Violation):
                violations.append(decoded)
            else:
                audio, rate = decoded
        context.append(ContextSegment(speaker=segment.speaker, text=segment.text, audio=audio, sample_rate=rate))
    if violations:
        raise InvalidRequest(violations)

    sampling = request.sampling
    params = SynthesisParams(
        text=request.text,
        speaker=request.speaker,
        context=tuple(context),
        temperature=sampling.temperature if sampling.HasField("temperature") else DEFAULT_TEMPERATURE,
        top_k=sampling.top_k if sampling.HasField("top_k") else DEFAULT_TOP_K,
        seed=sampling.seed if sampling.HasField("seed") else None,
        max_audio_ms=request.max_audio_ms or None,
        output_sample_rate=sample_rate,
        request_id=request_id,
    )
    return ParsedRequest(params=params, encoding=encoding, sample_rate=sample_rate)


def _decode_context_audio(audio: pb.AudioInput, field: str) -> tuple[np.ndarray, int] | Violation:
    if audio.encoding not in INPUT_ENCODINGS:
        return Violation(
            f"{field}.encoding",
            f"unknown encoding {audio.encoding}; use UNSPECIFIED (WAV/FLAC/Ogg detected), PCM_S16LE, PCM_F32LE, WAV or OGG_OPUS")
    raw = audio.encoding in RAW_INPUT_ENCODINGS
    if raw and not MIN_SAMPLE_RATE <= audio.sample_rate <= MAX_SAMPLE_RATE:
        given = "missing" if audio.sample_rate == 0 else f"{audio.sample_rate} Hz"
        return Violation(
            f"{field}.sample_rate",
            f"{given}: raw PCM needs its sample rate, from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz")
    try:
        return decode_audio(audio.data, INPUT_ENCODINGS[audio.encoding], audio.sample_rate if raw else None)
    except AudioDecodeError as exc:
        return Violation(field, str(exc))
