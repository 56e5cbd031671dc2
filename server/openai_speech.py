"""OpenAI's `POST /v1/audio/speech` request, read into what the engine takes. Torch-free.

The request shape is OpenAI's (model, input, voice, response_format, speed, instructions,
stream_format), with OpenAI's limits (input up to 4096 characters, speed 0.25..4.0). Like
vLLM's OpenAI server, a few extra fields a client can send through its SDK's `extra_body` reach
CSM's own sampling: seed, temperature, top_k, max_audio_ms; and `stream` chooses between audio
as it is generated and one exact file (see STREAMED_BY_DEFAULT). Fields this server does not
know are ignored, as clients written for other servers send their own. Every problem with the
request is reported at once, each with the field it is about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from csm_core.constants import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, SAMPLE_RATE
from server.audio_encoding import OutputEncoding
from server.engine import rules
from server.engine.types import EngineLimits, InvalidRequest, SynthesisParams, Violation
from server.errors import NotFound
from server.front.voices import VoiceChoice, VoiceLookup
from server.tempo import MAX_SPEED, MIN_SPEED
from server.voices.synthesis import blame_request_fields, with_voice
from server.voices.types import Voice


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    encoding: OutputEncoding
    media_type: str


# OpenAI's response formats, all at 24 kHz mono like OpenAI's. pcm is raw 16-bit little-endian.
RESPONSE_FORMATS = {
    "mp3": ResponseFormat(OutputEncoding.MP3, "audio/mpeg"),
    "opus": ResponseFormat(OutputEncoding.OGG_OPUS, "audio/ogg; codecs=opus"),
    "aac": ResponseFormat(OutputEncoding.AAC, "audio/aac"),
    "flac": ResponseFormat(OutputEncoding.FLAC, "audio/flac"),
    "wav": ResponseFormat(OutputEncoding.WAV, "audio/wav"),
    "pcm": ResponseFormat(OutputEncoding.PCM_S16LE, "audio/pcm"),
}
DEFAULT_RESPONSE_FORMAT = "mp3"  # OpenAI's default
STREAM_FORMATS = ("audio", "sse")
MAX_INPUT_CHARS = 4096  # OpenAI's limit on `input` (the engine's max_text_chars applies too)
# `stream` (extra_body) unset: audio leaves as it is generated, except FLAC, sent as one exact
# file: a streamed FLAC cannot give its total length, and libsndfile (soundfile) refuses to read
# one without it. `stream: false` sends any format whole, with its real sizes (WAV's RIFF and
# data sizes; FFmpeg's muxers fill in their headers); `stream: true` streams FLAC too.
STREAMED_BY_DEFAULT = frozenset(RESPONSE_FORMATS) - {"flac"}
# OpenAI's model names for speech: accepted (and listed) by default, so clients that hard-code
# one work unchanged. --served-model-name replaces the whole list.
OPENAI_TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# Engine field paths (shared with csm.v1) as this API names them.
ENGINE_FIELDS = {"text": "input", "speaker": "voice", "sampling.temperature": "temperature",
                 "sampling.top_k": "top_k", "sampling.seed": "seed", "max_audio_ms": "max_audio_ms",
                 "request_id": "x-request-id"}


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    params: SynthesisParams
    response_format: ResponseFormat
    speed: float
    stream_format: str  # "audio" or "sse"
    voice: Voice | None = None  # the stored voice it speaks with (its segments are not in params yet)
    whole: bool = False  # one exact file, sent once it is complete (never with sse)


def parse_speech_request(body: Any, *, models: tuple[str, ...], limits: EngineLimits, request_id: str,
                         voices: VoiceLookup, tenant: str) -> SpeechRequest:
    """Raises NotFound for a model this server does not serve, InvalidRequest listing every
    other problem at once: this API's own fields, and the engine's rules (text length,
    sampling ranges, max_audio_ms: server/engine/rules.py) named as this API names them.

    `voice` is looked up once, by the front door's `voices.choose` (a stored voice of `tenant`
    first, then a speaker id or an OpenAI name): a stored voice's segments open the context and
    it speaks as its last segment's speaker. Blocks on the voices directory: call it off the
    event loop."""
    if not isinstance(body, dict):
        raise InvalidRequest([Violation("body", "must be a JSON object")])
    violations: list[Violation] = []

    def field(name: str, types: type | tuple[type, ...], expected: str, default: Any = None,
              required: bool = False) -> Any:
        """The value of `name` if it has one of `types`, else `default` (JSON booleans never pass as numbers)."""
        value = body.get(name)
        if value is None:
            if required:
                violations.append(Violation(name, "is required"))
            return default
        if not isinstance(value, types) or isinstance(value, bool):
            violations.append(Violation(name, f"must be {expected}, got {json_type(value)}"))
            return default
        return value

    number = (int, float)
    model = field("model", str, "a string", required=True)
    text = field("input", str, "a string", required=True)
    voice = field("voice", (str, dict), "a string or an object with an `id`", required=True)
    response_format = field("response_format", str, "a string", DEFAULT_RESPONSE_FORMAT)
    speed = field("speed", number, "a number", 1.0)
    field("instructions", str, "a string")  # accepted and ignored: CSM follows no instructions (docs/api.md)
    stream_format = field("stream_format", str, "a string", "audio")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        violations.append(Violation("stream", f"must be a boolean, got {json_type(stream)}"))
        stream = None
    seed = field("seed", int, "an integer")
    temperature = field("temperature", number, "a number", DEFAULT_TEMPERATURE)
    top_k = field("top_k", int, "an integer", DEFAULT_TOP_K)
    max_audio_ms = field("max_audio_ms", int, "an integer")

    if model is not None and model not in models:
        raise NotFound(f"the model `{model}` does not exist on this server; it serves {', '.join(models)}")
    if text is not None and not text.strip():
        violations.append(Violation("input", "must not be empty"))
    elif text is not None and len(text) > MAX_INPUT_CHARS:
        violations.append(Violation("input", f"{len(text)} characters; at most {MAX_INPUT_CHARS} are accepted"))
    choice = VoiceChoice(0)
    voice_field = "voice"
    if isinstance(voice, dict):
        voice, voice_field = voice.get("id"), "voice.id"
        if not isinstance(voice, str):
            violations.append(Violation(voice_field, "must be a string"))
    if isinstance(voice, str):
        try:
            choice = voices.choose(tenant, voice, voice_field)
        except InvalidRequest as exc:
            violations += exc.violations
    if response_format not in RESPONSE_FORMATS:
        violations.append(Violation("response_format", f"{response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}"))
    if not (MIN_SPEED <= speed <= MAX_SPEED) or math.isnan(speed):
        violations.append(Violation("speed", f"{speed} is outside {MIN_SPEED}..{MAX_SPEED}"))
    if stream_format not in STREAM_FORMATS:
        violations.append(Violation("stream_format", f"{stream_format!r} is not one of {', '.join(STREAM_FORMATS)}"))
    if seed is not None and not 0 <= seed < 2**64:
        violations.append(Violation("seed", "must be in 0..2^64-1"))
    if max_audio_ms is not None and max_audio_ms <= 0:
        violations.append(Violation("max_audio_ms", "must be positive"))

    encoding = RESPONSE_FORMATS.get(response_format, RESPONSE_FORMATS[DEFAULT_RESPONSE_FORMAT]).encoding
    params = SynthesisParams(text=text or "", speaker=choice.speaker, temperature=float(temperature), top_k=top_k, seed=seed,
                             max_audio_ms=max_audio_ms if max_audio_ms and max_audio_ms > 0 else None,
                             output_encoding=encoding.value, output_sample_rate=SAMPLE_RATE, request_id=request_id)
    named = {v.field for v in violations}
    checked = with_voice(params, choice.voice) if choice.voice is not None else params
    violations += [v for v in in_api_terms(InvalidRequest(rules.check(checked, limits)), choice.voice).violations
                   if v.field not in named]
    if violations:
        raise InvalidRequest(violations)
    streamed = response_format in STREAMED_BY_DEFAULT if stream is None else stream
    return SpeechRequest(params, RESPONSE_FORMATS[response_format], float(speed), stream_format, choice.voice,
                         whole=stream_format == "audio" and not streamed)


def in_api_terms(exc: InvalidRequest, voice: Voice | None = None) -> InvalidRequest:
    """The engine's violations with this API's field names (`text` is `input`, `speaker` is
    `voice`, a stored voice's context segments are `voice`)."""
    if voice is not None:
        exc = blame_request_fields(exc, voice)
    return InvalidRequest([Violation(ENGINE_FIELDS.get(v.field, v.field), v.description) for v in exc.violations])


def json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
