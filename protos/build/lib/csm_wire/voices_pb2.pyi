import datetime

from . import speech_pb2 as _speech_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateVoiceRequest(_message.Message):
    __slots__ = ("name", "segments", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    segments: _containers.RepeatedCompositeFieldContainer[_speech_pb2.Segment]
    description: str
    def __init__(self, name: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[_speech_pb2.Segment, _Mapping]]] = ..., description: _Optional[str] = ...) -> None: ...

class Voice(_message.Message):
    __slots__ = ("name", "description", "segments", "prompt_frames", "audio_ms", "content_hash", "create_time", "size_bytes", "codec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    segments: _containers.RepeatedCompositeFieldContainer[VoiceSegment]
    prompt_frames: int
    audio_ms: int
    content_hash: str
    create_time: _timestamp_pb2.Timestamp
    size_bytes: int
    codec: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[VoiceSegment, _Mapping]]] = ..., prompt_frames: _Optional[int] = ..., audio_ms: _Optional[int] = ..., content_hash: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., codec: _Optional[str] = ...) -> None: ...

class VoiceSegment(_message.Message):
    __slots__ = ("speaker", "text", "audio_frames", "audio_ms", "prompt_frames")
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FRAMES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    speaker: int
    text: str
    audio_frames: int
    audio_ms: int
    prompt_frames: int
    def __init__(self, speaker: _Optional[int] = ..., text: _Optional[str] = ..., audio_frames: _Optional[int] = ..., audio_ms: _Optional[int] = ..., prompt_frames: _Optional[int] = ...) -> None: ...

class GetVoiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListVoicesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVoicesResponse(_message.Message):
    __slots__ = ("voices", "next_page_token", "total_voices", "total_size_bytes", "max_voices", "max_size_bytes")
    VOICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VOICES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_VOICES_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    voices: _containers.RepeatedCompositeFieldContainer[Voice]
    next_page_token: str
    total_voices: int
    total_size_bytes: int
    max_voices: int
    max_size_bytes: int
    def __init__(self, voices: _Optional[_Iterable[_Union[Voice, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_voices: _Optional[int] = ..., total_size_bytes: _Optional[int] = ..., max_voices: _Optional[int] = ..., max_size_bytes: _Optional[int] = ...) -> None: ...

class DeleteVoiceRequest(_message.Message):
    __slots__ = ("name", "allow_missing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    allow_missing: bool
    def __init__(self, name: _Optional[str] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteVoiceResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
