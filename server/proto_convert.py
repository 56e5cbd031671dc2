"""csm.v1 messages <-> the front door's types. Torch-free, and cheap: no decoding, no checks.

Every rule a request must keep is in server/engine/rules.py, applied by `Engine.submit`; this
module only translates. Enum values this server does not know are passed on as their numbers,
so that the rules report them with the field they came in.
"""

from __future__ import annotations

from csm_core.constants import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, SAMPLE_RATE
from csm_wire import speech_pb2 as pb
from server.engine.types import ContextSegment, EncodedAudio, FinishReason, OutputEncoding, SynthesisParams
from server.front.engine_client import Summary

OUTPUT_ENCODINGS = {
    pb.AUDIO_ENCODING_UNSPECIFIED: OutputEncoding.PCM_S16LE,
    pb.AUDIO_ENCODING_PCM_S16LE: OutputEncoding.PCM_S16LE,
    pb.AUDIO_ENCODING_PCM_F32LE: OutputEncoding.PCM_F32LE,
    pb.AUDIO_ENCODING_WAV: OutputEncoding.WAV,
    pb.AUDIO_ENCODING_OGG_OPUS: OutputEncoding.OGG_OPUS,
}
FINISH_REASONS = {
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}
# What csm_core.audio_io.decode_audio calls each input encoding.
INPUT_ENCODINGS = {
    pb.AUDIO_ENCODING_UNSPECIFIED: "auto",
    pb.AUDIO_ENCODING_PCM_S16LE: "pcm_s16le",
    pb.AUDIO_ENCODING_PCM_F32LE: "pcm_f32le",
    pb.AUDIO_ENCODING_WAV: "wav",
    pb.AUDIO_ENCODING_OGG_OPUS: "ogg_opus",
}


def synthesis_params(request: pb.SynthesizeRequest) -> SynthesisParams:
    output = OUTPUT_ENCODINGS.get(request.output.encoding)
    sampling = request.sampling
    return SynthesisParams(
        text=request.text,
        speaker=request.speaker,
        context=tuple(_segment(s) for s in request.context),
        temperature=sampling.temperature if sampling.HasField("temperature") else DEFAULT_TEMPERATURE,
        top_k=sampling.top_k if sampling.HasField("top_k") else DEFAULT_TOP_K,
        seed=sampling.seed if sampling.HasField("seed") else None,
        max_audio_ms=request.max_audio_ms or None,
        output_encoding=output.value if output is not None else str(request.output.encoding),
        output_sample_rate=request.output.sample_rate or SAMPLE_RATE,
        request_id=request.request_id,
    )


def _segment(segment: pb.Segment) -> ContextSegment:
    audio = encoded_audio(segment.audio) if segment.HasField("audio") else None
    return ContextSegment(speaker=segment.speaker, text=segment.text, audio=audio)


def encoded_audio(audio: pb.AudioInput) -> EncodedAudio:
    return EncodedAudio(audio.data, INPUT_ENCODINGS.get(audio.encoding, str(audio.encoding)), audio.sample_rate)


def synthesis_result(summary: Summary) -> pb.SynthesisResult:
    """The last message of a Synthesize stream and of a Converse speak turn."""
    ms_per_sample = 1000.0 / summary.sample_rate
    return pb.SynthesisResult(
        request_id=summary.request_id,
        finish_reason=FINISH_REASONS[summary.reason],
        frames=summary.frames,
        audio_samples=summary.audio_samples,
        audio_ms=summary.audio_samples * ms_per_sample,
        sample_rate=summary.sample_rate,
        queue_ms=summary.queue_s * 1000.0,
        time_to_first_audio_ms=(summary.first_audio_s or 0.0) * 1000.0,
        total_ms=summary.total_s * 1000.0,
        watermarked=summary.watermarked,
        prompt_frames=summary.prompt_frames,
    )
