"""What crosses the boundary between a front end (the gRPC servicer, benchmarks) and the engine.

Torch-free on purpose: the servicer imports this module, never torch. Audio travels as numpy
float32 mono arrays, or still encoded (`EncodedAudio`): the engine's prep thread decodes it,
so no front end ever decodes audio on its event loop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from server.engine.prefix_cache import PrefixCacheStats
from server.tenants import DEFAULT_TENANT


class FinishReason(enum.Enum):
    EOS = "eos"  # the model produced its all-zero end-of-utterance frame
    LENGTH = "length"  # max_audio_ms reached
    CANCELLED = "cancelled"  # caller went away, deadline passed, or server shut down
    STALLED = "stalled"  # the caller read its audio too slowly for too long
    INVALID = "invalid"  # found invalid once its audio was decoded or its prompt built: see violations
    ERROR = "error"  # this request failed inside the engine; others are unaffected


class OutputEncoding(enum.Enum):
    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"
    WAV = "wav"  # RIFF/WAVE, 16-bit PCM
    OGG_OPUS = "ogg_opus"
    MP3 = "mp3"
    AAC = "aac"  # raw AAC-LC in ADTS frames
    FLAC = "flac"


@dataclass(slots=True, frozen=True)
class EncodedAudio:
    """Audio as the caller sent it. `encoding` is a csm_core.audio_io encoding name ("auto",
    "wav", "ogg_opus", "pcm_s16le", "pcm_f32le"); raw PCM needs `sample_rate`."""

    data: bytes
    encoding: str = "auto"
    sample_rate: int = 0


@dataclass(slots=True, frozen=True)
class ContextSegment:
    """An earlier turn. `audio` is mono float32 at `sample_rate` (any rate; the engine resamples)
    or `EncodedAudio` (decoded by the engine, off the caller's thread). `codes` is the turn's
    audio already Mimi-encoded (a stored voice): used as it is, never encoded again; a segment
    carries audio or codes, not both."""

    speaker: int
    text: str
    audio: np.ndarray | EncodedAudio | None = None
    sample_rate: int = 24_000  # of an ndarray `audio`
    codes: np.ndarray | None = None  # int16 [32, frames], read-only (shared with the voice registry)


@dataclass(slots=True, frozen=True)
class SynthesisParams:
    """One request, as the engine sees it. Defaults are CSM's (temperature 0.9, top-k 50).
    Every limit it must keep is in server/engine/rules.py."""

    text: str
    speaker: int = 0
    context: tuple[ContextSegment, ...] = ()
    temperature: float = 0.9
    top_k: int = 50
    seed: int | None = None  # None: the engine draws one
    max_audio_ms: int | None = None  # None: bounded by the text (rules.default_audio_ms)
    output_encoding: str = OutputEncoding.PCM_S16LE.value  # an OutputEncoding value (the front end encodes)
    output_sample_rate: int = 24_000  # the engine resamples its 24 kHz output to this rate
    request_id: str = ""  # the caller's label: echoed and logged, never a key inside the engine
    # Whose request (server/tenants.py): its prompt's prefix-cache blocks are this tenant's alone.
    tenant: str = DEFAULT_TENANT


@dataclass(slots=True, frozen=True)
class AudioOut:
    """A piece of one stream's audio, in order, at the request's output sample rate."""

    pcm: np.ndarray  # float32 [n]
    frames: int  # number of 80 ms model frames this piece completes
    watermarked: bool


@dataclass(slots=True, frozen=True)
class ContextState:
    """A conversation's context after one of its turns (or a piece of one) was applied."""

    positions: int  # backbone positions the context takes
    turns: int  # turns in it, the voice's segments not counted
    dropped: tuple[str, ...] = ()  # turns dropped from its start to make room, oldest first


@dataclass(slots=True, frozen=True)
class Finished:
    """The last event of every stream."""

    reason: FinishReason
    frames: int  # generated frames, the EOS frame not counted
    prompt_frames: int
    queue_s: float  # arrival -> admission into a slot
    ttfa_s: float | None  # arrival -> first audio handed to the stream (None: no audio)
    total_s: float  # arrival -> finished
    watermarked: bool
    error: str | None = None  # set when reason is ERROR or CANCELLED by the server
    violations: tuple[Violation, ...] = ()  # set when reason is INVALID
    context: ContextState | None = None  # a conversation's turn: its context once the turn is applied


Event = AudioOut | Finished


@dataclass(slots=True, frozen=True)
class Violation:
    field: str  # request field path, e.g. "context[1].audio" or "sampling.top_k"
    description: str  # what is wrong and what would be accepted


class InvalidRequest(Exception):
    """The request can never be served as sent (maps to INVALID_ARGUMENT)."""

    def __init__(self, violations: list[Violation] | tuple[Violation, ...]):
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class QueueFull(Exception):
    """The engine holds as many requests as it may; try again later (RESOURCE_EXHAUSTED + RetryInfo)."""

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class TooManyConversations(QueueFull):
    """As many conversations are open as the server allows (RESOURCE_EXHAUSTED + RetryInfo)."""


class EngineUnavailable(Exception):
    """The engine is not accepting work: warming up, draining or stopped (maps to UNAVAILABLE)."""


@dataclass(slots=True, frozen=True)
class EngineLimits:
    """Every request limit, defined once (server/engine/rules.py checks them)."""

    max_slots: int
    max_queue: int  # requests that may wait for a slot beyond the slots
    max_seq_len: int  # backbone positions per slot: prompt + generated frames must fit
    max_text_chars: int  # the text to speak, and each context segment's text
    max_context_segments: int
    max_speaker_id: int
    max_audio_ms: int
    default_max_audio_ms: int  # ceiling of the length of a request without max_audio_ms (rules.default_audio_ms)
    max_context_audio_s: float  # each context segment's audio
    max_request_id_chars: int
    max_conversations: int = 0  # open conversations (Converse calls) at once; 0: none
    conversation_idle_s: float = 0.0  # a conversation without a turn this long gives its slot back
    conversation_max_lifetime_s: float = 0.0  # a conversation ends this long after it opened (0: no limit)


@dataclass(slots=True, frozen=True)
class ModelCard:
    """What the engine reports about its model."""

    model_source: str
    preset: str  # "csm-1b" | "bench" | "tiny" | "custom"
    random_weights: bool
    device: str
    dtype: str
    backbone_layers: int
    backbone_dim: int
    decoder_layers: int
    decoder_dim: int


@dataclass(slots=True, frozen=True)
class EngineInfo(ModelCard):
    """The model, the audio it makes and the engine's limits (GetModelInfo, /v1/models)."""

    num_codebooks: int
    sample_rate: int
    frame_rate_hz: float
    frame_samples: int
    watermark_enabled: bool
    limits: EngineLimits


@dataclass(slots=True, frozen=True)
class EngineStats:
    """A snapshot of the engine's load, published by the engine thread; cheap to read anywhere."""

    slots_in_use: int  # running a request, or held by a conversation between its turns
    max_slots: int
    requests_waiting: int  # submitted, no slot yet (context being prepared, or queued)
    requests_prefilling: int
    requests_decoding: int
    requests_paused: int = 0  # decoding requests paused until their reader catches up
    conversations: int = 0  # open
    conversations_holding_slots: int = 0
    prefix_cache: PrefixCacheStats | None = None  # None: the prefix cache is off
    requests_preempted: int = 0  # paused, slot given back, KV in host memory
    preemptions: int = 0  # since the engine started
    resumes: int = 0  # preempted requests that took a slot again, since the engine started


@dataclass(slots=True, frozen=True)
class StepStats:
    """Handed to step observers (`Engine.add_step_observer`) after every engine step, on the engine thread."""

    duration_s: float
    decoding: int  # slots that produced a frame this step
    prefill_tokens: int  # prompt positions prefilled this step
    frames: int  # frames produced this step
    breakdown_s: dict[str, float]  # backbone, depth, mimi (hand-off wait), other
    finished: tuple[FinishReason, ...] = ()  # requests that ended this step


@dataclass(slots=True, frozen=True)
class RequestTimes:
    """Handed to request observers (`Engine.add_request_observer`) when a request ends, on the engine thread."""

    reason: FinishReason
    max_frames: int  # its length limit (max_audio_ms, or the default), in frames; 0 for a listening turn
    frames: int  # generated (EOS not counted)
    queue_s: float | None  # arrival -> a slot (None: it never had one)
    prefill_s: float | None  # a slot -> its first frame (None: no frame)
    decode_s: float | None  # its first frame -> its end (None: no frame)


@dataclass(slots=True, frozen=True)
class PipelineCounters:
    """Busy time of the threads beside the engine's, and Mimi's calls, since the engine started."""

    output_busy_s: float  # watermarking and resampling, summed over the output workers
    mimi_busy_s: float
    mimi_calls: int
    mimi_frames: int  # step-frames decoded (a call of T steps counts T)
