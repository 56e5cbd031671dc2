"""Converse messages -> what the engine's Conversation takes (server/engine/conversation.py),
and their rules. Torch-free, no decoding. The rules are server/engine/rules.py's, named by the
field of the message that broke them: `config.speaker`, a speak turn's `sampling.top_k`, a
context turn's `segment.audio`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from csm_core.constants import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, SAMPLE_RATE
from csm_wire import speech_pb2 as pb
from server.engine import rules
from server.engine.types import ContextSegment, EngineLimits, SynthesisParams, Violation
from server.proto_convert import OUTPUT_ENCODINGS, encoded_audio


@dataclass(frozen=True, slots=True)
class TurnDefaults:
    """What a speak turn takes from the conversation's config when it sets nothing."""

    speaker: int
    sampling: pb.Sampling
    output: pb.OutputFormat
    max_audio_ms: int


def defaults(config: pb.ConversationConfig) -> TurnDefaults:
    return TurnDefaults(config.speaker, config.sampling, config.output, config.max_audio_ms)


def check_config(config: pb.ConversationConfig, limits: EngineLimits) -> list[Violation]:
    """The config's fields, as a speak turn with a placeholder text would use them."""
    params = speak_params(pb.SpeakTurn(text="-"), defaults(config), request_id=config.conversation_id)
    names = {"request_id": "conversation_id"}
    return [Violation("config." + names.get(v.field, v.field), v.description)
            for v in rules.check(params, limits) if v.field != "text"]


def speak_params(turn: pb.SpeakTurn, d: TurnDefaults, request_id: str = "") -> SynthesisParams:
    """A speak turn's settings, its own fields over the conversation's (text: its first piece)."""
    own, base = turn.sampling, d.sampling

    def pick(name: str, default):
        if own.HasField(name):
            return getattr(own, name)
        return getattr(base, name) if base.HasField(name) else default

    output = turn.output if turn.HasField("output") else d.output
    encoding = OUTPUT_ENCODINGS.get(output.encoding)
    return SynthesisParams(
        text=turn.text,
        speaker=turn.speaker if turn.HasField("speaker") else d.speaker,
        temperature=pick("temperature", DEFAULT_TEMPERATURE),
        top_k=pick("top_k", DEFAULT_TOP_K),
        seed=pick("seed", None),
        max_audio_ms=turn.max_audio_ms or d.max_audio_ms or None,
        output_encoding=encoding.value if encoding is not None else str(output.encoding),
        output_sample_rate=output.sample_rate or SAMPLE_RATE,
        request_id=request_id,
    )


def check_speak(params: SynthesisParams, streamed: bool, limits: EngineLimits) -> list[Violation]:
    """A speak turn as it arrives; a streamed turn's text is checked as it grows (check_text)."""
    checked = replace(params, text=params.text or "-") if streamed else params
    return [Violation("turn_id", v.description) if v.field == "request_id" else v for v in rules.check(checked, limits)]


def check_text(chars: int, limits: EngineLimits) -> Violation | None:
    """A streamed turn's whole text so far."""
    if chars <= limits.max_text_chars:
        return None
    return Violation("text", f"the turn's text reached {chars} characters; at most {limits.max_text_chars} are "
                             "accepted for a whole turn")


def context_segment(turn: pb.ContextTurn) -> ContextSegment:
    seg = turn.segment
    audio = encoded_audio(seg.audio) if seg.HasField("audio") else None
    return ContextSegment(speaker=seg.speaker, text=seg.text, audio=audio)


def segment_fields(violations: tuple[Violation, ...] | list[Violation]) -> list[Violation]:
    """The engine names a context turn's fields `context[0]...`; the message calls them `segment...`."""
    out = []
    for v in violations:
        split = rules.split_segment_field(v.field)
        out.append(Violation("segment" + split[1], v.description) if split else v)
    return out
