"""csm.v1 voice messages <-> the registry's types. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from csm_core.audio_io import AudioDecodeError, AudioTooLong, decode_audio
from csm_core.constants import FRAME_MS
from csm_wire import speech_pb2 as pb
from csm_wire import voices_pb2 as vpb
from server.engine.rules import clip_too_long, encoded_audio_violations
from server.engine.types import InvalidRequest, Violation
from server.proto_convert import encoded_audio
from server.voices.registry import Clip, NewSegment, VoiceLimits
from server.voices.types import Voice


def decode_segments(segments: Sequence[pb.Segment], limits: VoiceLimits) -> list[NewSegment]:
    """Decodes each segment's audio; InvalidRequest lists every segment whose audio is unusable.
    Each clip is decoded up to max_context_audio_s and, with those before it, up to the audio a
    voice can hold and leave room to speak: past either it is refused without being decoded
    whole, so a CreateVoice costs at most that much audio however many bytes it sends."""
    most = limits.engine.max_context_segments
    if len(segments) > most:  # refused before any of them is decoded
        raise InvalidRequest([Violation("segments", f"{len(segments)} segments; at most {most}")])
    out, violations = [], []
    room = limits.max_prompt_frames * FRAME_MS / 1000
    used = 0.0  # seconds of the voice's audio before this segment
    for i, seg in enumerate(segments):
        clip = None
        if seg.HasField("audio"):
            field, audio = f"segments[{i}].audio", encoded_audio(seg.audio)
            problems = encoded_audio_violations(field, audio)
            if not problems:
                limit = min(limits.engine.max_context_audio_s, max(0.0, room - used))
                try:
                    clip = Clip(*decode_audio(audio.data, audio.encoding, audio.sample_rate or None,
                                              max_seconds=limit))
                    used += clip.seconds
                except AudioTooLong as e:
                    problems = [clip_too_long(field, e, limits.engine) or Violation(
                        "segments", f"the segments' audio passes the {room:.1f} s a voice can hold and leave room "
                                    "to speak: use less or shorter audio")]
                    problems = [p for p in problems if p not in violations]  # the room is passed once
                except AudioDecodeError as e:
                    problems = [Violation(field, str(e))]
            violations.extend(problems)
        out.append(NewSegment(speaker=seg.speaker, text=seg.text, audio=clip))
    if violations:
        raise InvalidRequest(violations)
    return out


def voice_to_proto(voice: Voice) -> vpb.Voice:
    created = Timestamp()
    created.FromNanoseconds(int(voice.created_at * 1e9))
    return vpb.Voice(
        name=voice.name,
        description=voice.description,
        segments=[
            vpb.VoiceSegment(speaker=s.speaker, text=s.text, audio_frames=s.audio_frames,
                             audio_ms=s.audio_frames * FRAME_MS, prompt_frames=s.prompt_frames)
            for s in voice.segments
        ],
        prompt_frames=voice.prompt_frames,
        audio_ms=voice.audio_ms,
        content_hash=voice.content_hash,
        create_time=created,
        size_bytes=voice.size_bytes,
        codec=voice.codec,
    )
