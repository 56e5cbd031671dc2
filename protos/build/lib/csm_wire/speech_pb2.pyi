from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM_S16LE: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM_F32LE: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_WAV: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_OGG_OPUS: _ClassVar[AudioEncoding]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_ERROR: _ClassVar[FinishReason]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM_S16LE: AudioEncoding
AUDIO_ENCODING_PCM_F32LE: AudioEncoding
AUDIO_ENCODING_WAV: AudioEncoding
AUDIO_ENCODING_OGG_OPUS: AudioEncoding
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_ERROR: FinishReason

class AudioInput(_message.Message):
    __slots__ = ("data", "encoding", "sample_rate")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    encoding: AudioEncoding
    sample_rate: int
    def __init__(self, data: _Optional[bytes] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("speaker", "text", "audio")
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    speaker: int
    text: str
    audio: AudioInput
    def __init__(self, speaker: _Optional[int] = ..., text: _Optional[str] = ..., audio: _Optional[_Union[AudioInput, _Mapping]] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class OutputFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("text", "speaker", "context", "sampling", "max_audio_ms", "output", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    speaker: int
    context: _containers.RepeatedCompositeFieldContainer[Segment]
    sampling: Sampling
    max_audio_ms: int
    output: OutputFormat
    request_id: str
    def __init__(self, text: _Optional[str] = ..., speaker: _Optional[int] = ..., context: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_audio_ms: _Optional[int] = ..., output: _Optional[_Union[OutputFormat, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("sequence", "data", "start_sample", "num_samples", "start_ms", "duration_ms")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    START_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    data: bytes
    start_sample: int
    num_samples: int
    start_ms: float
    duration_ms: float
    def __init__(self, sequence: _Optional[int] = ..., data: _Optional[bytes] = ..., start_sample: _Optional[int] = ..., num_samples: _Optional[int] = ..., start_ms: _Optional[float] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class SynthesisResult(_message.Message):
    __slots__ = ("request_id", "finish_reason", "frames", "audio_samples", "audio_ms", "sample_rate", "queue_ms", "time_to_first_audio_ms", "total_ms", "watermarked", "prompt_frames")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    WATERMARKED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    finish_reason: FinishReason
    frames: int
    audio_samples: int
    audio_ms: float
    sample_rate: int
    queue_ms: float
    time_to_first_audio_ms: float
    total_ms: float
    watermarked: bool
    prompt_frames: int
    def __init__(self, request_id: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., frames: _Optional[int] = ..., audio_samples: _Optional[int] = ..., audio_ms: _Optional[float] = ..., sample_rate: _Optional[int] = ..., queue_ms: _Optional[float] = ..., time_to_first_audio_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., watermarked: _Optional[bool] = ..., prompt_frames: _Optional[int] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("audio", "result")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    audio: AudioChunk
    result: SynthesisResult
    def __init__(self, audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., result: _Optional[_Union[SynthesisResult, _Mapping]] = ...) -> None: ...

class SynthesizeUnaryResponse(_message.Message):
    __slots__ = ("audio", "result")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    result: SynthesisResult
    def __init__(self, audio: _Optional[bytes] = ..., result: _Optional[_Union[SynthesisResult, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_source", "preset", "random_weights", "device", "dtype", "backbone_layers", "backbone_dim", "decoder_layers", "decoder_dim", "num_codebooks", "sample_rate", "frame_rate_hz", "frame_samples", "max_seq_len", "max_slots", "max_queue", "max_text_chars", "max_context_segments", "max_speaker_id", "max_audio_ms", "default_max_audio_ms", "watermark_enabled", "slots_in_use", "requests_waiting", "output_encodings")
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_DIM_FIELD_NUMBER: _ClassVar[int]
    DECODER_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DECODER_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_CODEBOOKS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    FRAME_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEAKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_ENABLED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_WAITING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    model_source: str
    preset: str
    random_weights: bool
    device: str
    dtype: str
    backbone_layers: int
    backbone_dim: int
    decoder_layers: int
    decoder_dim: int
    num_codebooks: int
    sample_rate: int
    frame_rate_hz: float
    frame_samples: int
    max_seq_len: int
    max_slots: int
    max_queue: int
    max_text_chars: int
    max_context_segments: int
    max_speaker_id: int
    max_audio_ms: int
    default_max_audio_ms: int
    watermark_enabled: bool
    slots_in_use: int
    requests_waiting: int
    output_encodings: _containers.RepeatedScalarFieldContainer[AudioEncoding]
    def __init__(self, model_source: _Optional[str] = ..., preset: _Optional[str] = ..., random_weights: _Optional[bool] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., backbone_layers: _Optional[int] = ..., backbone_dim: _Optional[int] = ..., decoder_layers: _Optional[int] = ..., decoder_dim: _Optional[int] = ..., num_codebooks: _Optional[int] = ..., sample_rate: _Optional[int] = ..., frame_rate_hz: _Optional[float] = ..., frame_samples: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., max_slots: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_context_segments: _Optional[int] = ..., max_speaker_id: _Optional[int] = ..., max_audio_ms: _Optional[int] = ..., default_max_audio_ms: _Optional[int] = ..., watermark_enabled: _Optional[bool] = ..., slots_in_use: _Optional[int] = ..., requests_waiting: _Optional[int] = ..., output_encodings: _Optional[_Iterable[_Union[AudioEncoding, str]]] = ...) -> None: ...
