"""Every rule a synthesis request must keep, in one table. Torch-free.

A rule names the request field it checks, as the wire spells it ("context[2].audio"), and
says what is wrong and what would be accepted. Limits come from `EngineLimits`, each defined
once. Rules run at two moments:

- `check(params, limits)` when a request is submitted, on the caller's thread: sizes, ranges
  and formats, all cheap (no decoding, no tokenizing), so a huge request is refused at once.
- on the prep thread, as context audio is decoded and once the prompt is built: audio that
  cannot be decoded or is too long (`clip_too_long`: found before the clip is decoded whole),
  and whether prompt + audio fit a slot (`check_prompt_fits`).

Every violation of a moment is reported together (one InvalidRequest / INVALID_ARGUMENT).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from csm_core.audio_io import ENCODINGS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, RAW_SAMPLE_BYTES, AudioTooLong
from csm_core.constants import AUDIO_VOCAB_SIZE, FRAME_MS, MAX_TEMPERATURE
from server.output_rates import rate_rule, supported_rate
from server.engine.types import (
    ContextSegment, EncodedAudio, EngineLimits, OutputEncoding, SynthesisParams, Violation,
)

Check = Callable[[Any, EngineLimits], str | None]  # a field's value -> what is wrong, or None

# Room a prompt prefix (a voice, a conversation's context) must leave for a request at the
# default length: this many text positions plus default_max_audio_ms of frames.
ROOM_TEXT_POSITIONS = 64

# A request without max_audio_ms may generate DEFAULT_FLOOR_MS + DEFAULT_MS_PER_CHAR per
# character of its text, at most default_max_audio_ms (default_audio_ms). Speech runs at about
# 15 characters a second (~67 ms each): this allows about 2.2x that, plus 2 s for pauses, so
# a real model ends by its end-of-audio frame long before, and a model that never ends it (the
# random-weights presets, a real model that runs on) stops soon. "Hello from CSM." (15
# characters): 4.25 s.
DEFAULT_FLOOR_MS = 2_000
DEFAULT_MS_PER_CHAR = 150


@dataclass(frozen=True, slots=True)
class Rule:
    field: str  # "{i}" stands for a context segment's index
    value: Callable[[Any], Any]  # the field's value, from the request (or from one segment)
    check: Check
    per_segment: bool = False  # applies to each context segment (up to max_context_segments)


# -- checks ------------------------------------------------------------------------------
def _text(text: str, lim: EngineLimits) -> str | None:
    if len(text) > lim.max_text_chars:
        return f"{len(text)} characters; at most {lim.max_text_chars} are accepted"
    if not text.strip():
        return "must not be empty"
    return None


def _speaker(speaker: int, lim: EngineLimits) -> str | None:
    return None if 0 <= speaker <= lim.max_speaker_id else f"{speaker} is outside [0, {lim.max_speaker_id}]"


def _request_id(label: str, lim: EngineLimits) -> str | None:
    if len(label) > lim.max_request_id_chars:
        return f"{len(label)} characters; at most {lim.max_request_id_chars} are accepted"
    if not label.isprintable():
        return "must be printable text (no control characters such as newlines)"
    return None


def _temperature(t: float, lim: EngineLimits) -> str | None:
    ok = np.isfinite(t) and 0.0 <= t <= MAX_TEMPERATURE
    return None if ok else f"{t} is outside [0, {MAX_TEMPERATURE:g}] (0 is greedy)"


def _top_k(k: int, lim: EngineLimits) -> str | None:
    return None if 1 <= k <= AUDIO_VOCAB_SIZE else f"{k} is outside [1, {AUDIO_VOCAB_SIZE}] (1 is greedy)"


def _max_audio_ms(ms: int | None, lim: EngineLimits) -> str | None:
    if ms is None:
        return None  # the default (default_audio_ms) is always in range
    return None if FRAME_MS <= ms <= lim.max_audio_ms else f"{ms} is outside [{FRAME_MS}, {lim.max_audio_ms}]"


_OUTPUT_ENCODINGS = {e.value: e for e in OutputEncoding}


def _output_encoding(name: str, lim: EngineLimits) -> str | None:
    if name in _OUTPUT_ENCODINGS:
        return None
    return f"unknown encoding {name}; use {', '.join(e.name for e in OutputEncoding)}"


def _output_rate(p: SynthesisParams, lim: EngineLimits) -> str | None:
    encoding = _OUTPUT_ENCODINGS.get(p.output_encoding)
    if encoding is None or supported_rate(encoding, p.output_sample_rate):
        return None  # an unknown encoding is reported by its own rule
    return f"{p.output_sample_rate} Hz is not supported: {rate_rule(encoding)}"


def _context_count(context: tuple, lim: EngineLimits) -> str | None:
    n = len(context)
    return None if n <= lim.max_context_segments else f"{n} segments; at most {lim.max_context_segments}"


def _audio_seconds_rule(seconds: float, lim: EngineLimits) -> str | None:
    if seconds > lim.max_context_audio_s:
        return f"{seconds:.1f} s is longer than the {lim.max_context_audio_s:g} s accepted"
    return None


def _audio_encoding(audio: EncodedAudio | None, lim: EngineLimits) -> str | None:
    if audio is None or audio.encoding in ENCODINGS:
        return None
    return (f"unknown encoding {audio.encoding}; use UNSPECIFIED (WAV/FLAC/Ogg detected), "
            "PCM_S16LE, PCM_F32LE, WAV or OGG_OPUS")


def _raw_audio_rate(audio: EncodedAudio | None, lim: EngineLimits) -> str | None:
    if audio is None or audio.encoding not in RAW_SAMPLE_BYTES or MIN_SAMPLE_RATE <= audio.sample_rate <= MAX_SAMPLE_RATE:
        return None
    given = "missing" if audio.sample_rate == 0 else f"{audio.sample_rate} Hz"
    return f"{given}: raw PCM needs its sample rate, from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"


def _context_audio(audio: np.ndarray | EncodedAudio | None, lim: EngineLimits) -> str | None:
    """What can be known before decoding; containers are measured as they are decoded (clip_too_long)."""
    if audio is None:
        return None
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1 or audio.size == 0:
            return "must be non-empty mono audio"
        return None
    if not audio.data:
        return "audio data is empty: send the bytes of a mono clip"
    width = RAW_SAMPLE_BYTES.get(audio.encoding)
    if width is None or not MIN_SAMPLE_RATE <= audio.sample_rate <= MAX_SAMPLE_RATE:
        return None  # a container, or a raw rate reported by its own rule
    return _audio_seconds_rule(len(audio.data) / width / audio.sample_rate, lim)


def _encoded(seg: ContextSegment) -> EncodedAudio | None:
    return seg.audio if isinstance(seg.audio, EncodedAudio) else None


def _array_seconds(seg: ContextSegment) -> float:
    return len(seg.audio) / seg.sample_rate if isinstance(seg.audio, np.ndarray) and seg.sample_rate > 0 else 0.0


RULES: tuple[Rule, ...] = (
    Rule("request_id", lambda p: p.request_id, _request_id),
    Rule("text", lambda p: p.text, _text),
    Rule("speaker", lambda p: p.speaker, _speaker),
    Rule("sampling.temperature", lambda p: p.temperature, _temperature),
    Rule("sampling.top_k", lambda p: p.top_k, _top_k),
    Rule("max_audio_ms", lambda p: p.max_audio_ms, _max_audio_ms),
    Rule("output.encoding", lambda p: p.output_encoding, _output_encoding),
    Rule("output.sample_rate", lambda p: p, _output_rate),
    Rule("context", lambda p: p.context, _context_count),
    Rule("context[{i}].text", lambda s: s.text, _text, per_segment=True),
    Rule("context[{i}].speaker", lambda s: s.speaker, _speaker, per_segment=True),
    Rule("context[{i}].audio", lambda s: s.audio, _context_audio, per_segment=True),
    Rule("context[{i}].audio.encoding", _encoded, _audio_encoding, per_segment=True),
    Rule("context[{i}].audio.sample_rate", _encoded, _raw_audio_rate, per_segment=True),
    Rule("context[{i}].audio", _array_seconds, _audio_seconds_rule, per_segment=True),
)


def _violations(params: SynthesisParams, limits: EngineLimits, segments_only: bool = False) -> Iterator[Violation]:
    segments = params.context[: limits.max_context_segments]
    for rule in RULES:
        if segments_only and not (rule.per_segment or rule.field == "context"):
            continue
        targets = enumerate(segments) if rule.per_segment else [(None, params)]
        for i, target in targets:
            problem = rule.check(rule.value(target), limits)
            if problem is not None:
                yield Violation(rule.field.format(i=i), problem)


_SEGMENT_FIELD = re.compile(r"context\[([0-9]+)\](.*)")


def split_segment_field(field: str) -> tuple[int, str] | None:
    """(i, rest) of a context segment's field `context[i]rest`; None for any other field. Front
    ends that carry segments elsewhere (a voice's, a conversation's turn) rename it with this."""
    match = _SEGMENT_FIELD.fullmatch(field)
    return None if match is None else (int(match.group(1)), match.group(2))


def check(params: SynthesisParams, limits: EngineLimits) -> list[Violation]:
    """Every violation that can be found without decoding or tokenizing."""
    return list(_violations(params, limits))


def check_segments(segments: tuple[ContextSegment, ...], limits: EngineLimits) -> list[Violation]:
    """The rules of context segments alone (a conversation's context turn, as `context[i]`)."""
    return list(_violations(SynthesisParams(text="", context=segments), limits, segments_only=True))


def default_audio_ms(text: str, limits: EngineLimits) -> int:
    """The length bound of a request that sets no max_audio_ms, from the text it speaks (every
    API: csm.v1 Synthesize*, Converse turns, the HTTP API): DEFAULT_FLOOR_MS +
    DEFAULT_MS_PER_CHAR per character, at most default_max_audio_ms, in whole 80 ms frames."""
    ms = min(DEFAULT_FLOOR_MS + DEFAULT_MS_PER_CHAR * len(text.strip()), limits.default_max_audio_ms)
    return max(FRAME_MS, ms // FRAME_MS * FRAME_MS)


def max_frames(params: SynthesisParams, limits: EngineLimits) -> int:
    """Frames the request may generate at most (max_audio_ms is an upper bound; without it,
    default_audio_ms of its text)."""
    ms = default_audio_ms(params.text, limits) if params.max_audio_ms is None else params.max_audio_ms
    return ms // FRAME_MS


def encoded_audio_violations(field: str, audio: EncodedAudio) -> list[Violation]:
    """The rules of encoded audio that need no limits (its encoding, a raw rate), for audio a
    request carries outside the context (a voice's segments)."""
    problems = [(f"{field}.encoding", _audio_encoding(audio, None)), (f"{field}.sample_rate", _raw_audio_rate(audio, None))]
    return [Violation(f, p) for f, p in problems if p is not None]


def context_audio_room_s(limits: EngineLimits) -> float:
    """Seconds of context audio one request can hold at most: every 80 ms frame takes a position
    of its slot. Decoding stops there, so a request's clips together cost at most this much."""
    return limits.max_seq_len * FRAME_MS / 1000


def clip_too_long(field: str, error: AudioTooLong, limits: EngineLimits) -> Violation | None:
    """A clip refused while it was decoded, when it passed max_context_audio_s; None when the
    limit that stopped it was lower (the room the clips before it left: the caller says whose)."""
    problem = None if error.seconds is None else _audio_seconds_rule(error.seconds, limits)
    if problem is None and error.limit_s >= limits.max_context_audio_s:
        problem = str(error)  # decoding stopped at max_context_audio_s
    return None if problem is None else Violation(field, problem)


def check_prompt_fits(prompt_len: int, frames: int, limits: EngineLimits) -> Violation | None:
    """Prompt positions + the frames asked for must fit one slot of the KV cache."""
    if prompt_len + frames <= limits.max_seq_len:
        return None
    room = (limits.max_seq_len - prompt_len) * FRAME_MS
    hint = (f"lower max_audio_ms to at most {room}" if room >= FRAME_MS
            else "shorten the context (fewer or shorter segments) or the text")
    return Violation("max_audio_ms", f"the prompt takes {prompt_len} of {limits.max_seq_len} positions and "
                                     f"{frames} frames do not fit: {hint}")


def room_to_speak(limits: EngineLimits) -> int:
    return ROOM_TEXT_POSITIONS + limits.default_max_audio_ms // FRAME_MS


def check_turn_fits(turn_positions: int, voice_positions: int, limits: EngineLimits) -> Violation | None:
    """A conversation's context turn must fit the window beside the voice, with room to speak."""
    room = room_to_speak(limits)
    if voice_positions + turn_positions + room <= limits.max_seq_len:
        return None
    most = max(0, limits.max_seq_len - voice_positions - room)
    return Violation("context[0]", f"the turn takes {turn_positions} positions; beside the voice's "
                                   f"{voice_positions} and room to speak ({room}) at most {most} fit the "
                                   f"window of {limits.max_seq_len}: send shorter audio")
