"""Voices as the server keeps them: typed records and the errors of the voice calls. Torch-free.

A voice is a prompt prefix: segments (speaker, transcript, Mimi codes) that open every prompt
using it. Its codes are the durable form (64 bytes per 80 ms frame); `content_hash` names the
prefix exactly, so two voices (or two requests) with equal hashes give the model the same
positions.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from csm_core.constants import FRAME_MS, NUM_CODEBOOKS

# 1..64 characters, lowercase so that names never collide on case-insensitive filesystems. The
# classes are spelled out in ASCII: \w or \d would take letters and digits of every script.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)
NAME_RULE = "1 to 64 characters from a-z, 0-9, '-' and '_', starting with a letter or a digit"
MAX_DESCRIPTION_CHARS = 1000


@dataclass(slots=True, frozen=True)
class VoiceSegment:
    speaker: int
    text: str
    codes: np.ndarray  # int16 [32, frames], read-only: shared by every request that uses the voice
    prompt_frames: int  # backbone positions: text tokens + frames + 1 end-of-audio frame

    @property
    def audio_frames(self) -> int:
        return int(self.codes.shape[1])


@dataclass(slots=True, frozen=True)
class Voice:
    name: str
    description: str
    segments: tuple[VoiceSegment, ...]
    content_hash: str  # "sha256:<hex>" of speakers, texts and codes (see content_hash)
    codec: str  # codec and weights fingerprint that made the codes, e.g. "mimi:3f2a9c0d1b7e4a65"
    created_at: float  # Unix time, seconds
    size_bytes: int = 0  # bytes in the voices directory (0 until stored)

    @property
    def prompt_frames(self) -> int:
        return sum(s.prompt_frames for s in self.segments)

    @property
    def audio_frames(self) -> int:
        return sum(s.audio_frames for s in self.segments)

    @property
    def audio_ms(self) -> int:
        return self.audio_frames * FRAME_MS


@dataclass(slots=True, frozen=True)
class VoiceUsage:
    voices: int
    bytes: int


def valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def segment_prompt_frames(text_tokens: int, audio_frames: int) -> int:
    """Backbone positions of a context segment: its text, its audio frames and the all-zero
    end-of-audio frame after them (csm_core.framing)."""
    return text_tokens + audio_frames + 1


def content_hash(segments: Iterable[tuple[int, str, np.ndarray]]) -> str:
    """The identity of a prompt prefix: (speaker, text, codes int16 [32, frames]) per segment.
    Independent of the tokenizer and of how the codes are stored."""
    digest = hashlib.sha256(b"csm-voice-content/1\0")
    for speaker, text, codes in segments:
        if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS:
            raise ValueError(f"codes must be [{NUM_CODEBOOKS}, frames], got {list(codes.shape)}")
        data = text.encode()
        digest.update(struct.pack("<IQQ", speaker, len(data), codes.shape[1]))
        digest.update(data)
        digest.update(np.ascontiguousarray(codes, dtype="<i2").tobytes())
    return "sha256:" + digest.hexdigest()


class VoiceNotFound(Exception):
    """No voice has this name (NOT_FOUND)."""


class VoiceExists(Exception):
    """A voice with this name exists already (ALREADY_EXISTS)."""


class VoiceQuotaExceeded(Exception):
    """Storing the voice would pass a limit of the voices directory (RESOURCE_EXHAUSTED)."""

    def __init__(self, subject: str, message: str):
        self.subject = subject  # which limit: "voices" or "bytes"
        super().__init__(message)


class VoiceUnusable(Exception):
    """The voice exists but this server cannot use it: another codec made its codes, or its
    file is unreadable (FAILED_PRECONDITION)."""
