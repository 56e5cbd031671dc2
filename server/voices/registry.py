"""The voice registry: checks a new voice, encodes its audio once, stores it, finds it by name.

Torch-free: the engine provides the audio encoder (Mimi, through `AudioEncoder`) and the
tokenizer that counts a segment's text positions. Every method blocks (file I/O, encoding):
the servicer calls them from a worker thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from csm_core.constants import FRAME_SAMPLES, MIMI_CODEBOOK_SIZE, NUM_CODEBOOKS, SAMPLE_RATE
from server.engine import rules
from server.engine.types import ContextSegment, EngineLimits, InvalidRequest, Violation
from server.voices.config import MAX_PENDING_CREATES, VoicesConfig
from server.voices.store import VoiceStore, to_bytes
from server.voices.types import (
    MAX_DESCRIPTION_CHARS, NAME_RULE, Voice, VoiceExists, VoiceQuotaExceeded, VoiceSegment, VoiceUnusable, VoiceUsage,
    content_hash, segment_prompt_frames, valid_name,
)

log = logging.getLogger(__name__)

@dataclass(slots=True, frozen=True)
class Clip:
    samples: np.ndarray  # float32 [n], mono
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(slots=True, frozen=True)
class NewSegment:
    speaker: int
    text: str
    audio: Clip | None  # required: a voice segment without audio is refused


@dataclass(slots=True, frozen=True)
class VoicePage:
    voices: list[Voice]
    next_after: str  # name to list after for the next page; "" on the last page


class AudioEncoder(Protocol):
    """Mono clips at any rate -> Mimi codes int16 [32, frames], one call for all clips."""

    @property
    def codec(self) -> str: ...
    def encode(self, clips: Sequence[Clip]) -> list[np.ndarray]: ...


class TurnTokenizer(Protocol):
    def encode_turn(self, speaker: int, text: str) -> list[int]: ...


@dataclass(slots=True, frozen=True)
class VoiceLimits:
    max_voices: int
    max_bytes: int
    max_prompt_frames: int  # the model's context minus the room a default request needs
    engine: EngineLimits  # a voice's segments keep the rules of a request's context segments
    max_pending_creates: int = MAX_PENDING_CREATES  # CreateVoice calls one server holds at once

    @classmethod
    def for_engine(cls, engine: EngineLimits, config: VoicesConfig) -> VoiceLimits:
        return cls(max_voices=config.max_voices, max_bytes=config.max_bytes,
                   max_prompt_frames=max(0, engine.max_seq_len - rules.room_to_speak(engine)), engine=engine,
                   max_pending_creates=config.max_pending_creates)


class VoiceRegistry:
    def __init__(self, store: VoiceStore, limits: VoiceLimits, encoder: AudioEncoder, tokenizer: TurnTokenizer):
        self.store = store
        self.limits = limits
        self._encoder = encoder
        self._tokenizer = tokenizer
        self._publishing = threading.Lock()  # one creation at a time between counting the directory and publishing

    @property
    def codec(self) -> str:
        return self._encoder.codec

    def create(self, name: str, segments: Sequence[NewSegment], description: str = "") -> Voice:
        """Raises InvalidRequest, VoiceExists or VoiceQuotaExceeded; encodes only a voice that passed."""
        t0 = time.monotonic()
        violations = self._check(name, segments, description)
        if violations:
            raise InvalidRequest(violations)
        if self.store.exists(name):  # early, before encoding; the store checks again when it publishes
            raise VoiceExists(f"voice {name!r} exists already: delete it first, or pick another name")
        self._check_count(self.store.usage())  # early, before encoding; counted again when it publishes
        codes = [self._checked_codes(c, i) for i, c in
                 enumerate(self._encoder.encode([s.audio for s in segments]))]
        prompt = [segment_prompt_frames(self._text_tokens(s), c.shape[1]) for s, c in zip(segments, codes)]
        if sum(prompt) > self.limits.max_prompt_frames:
            raise InvalidRequest([self._too_long(sum(prompt))])
        voice_segments = tuple(VoiceSegment(s.speaker, s.text, c, p) for s, c, p in zip(segments, codes, prompt))
        voice = Voice(name=name, description=description, segments=voice_segments,
                      content_hash=content_hash((s.speaker, s.text, s.codes) for s in voice_segments),
                      codec=self.codec, created_at=time.time())
        data = to_bytes(voice)
        with self._publishing:  # counted and published in one step: exact on one server (docs/api.md, Voices)
            usage = self.store.usage()
            self._check_count(usage)
            if usage.bytes + len(data) > self.limits.max_bytes:
                raise VoiceQuotaExceeded("bytes", f"voices take {usage.bytes} bytes and this one {len(data)}: "
                                                  f"more than the limit of {self.limits.max_bytes}; delete some "
                                                  "voices first")
            voice = self.store.create(voice, data)
        log.info("created voice %r: %d segments, %.1f s of audio, %d prompt positions, %d bytes, in %.2f s",
                 name, len(voice.segments), voice.audio_ms / 1000, voice.prompt_frames, voice.size_bytes,
                 time.monotonic() - t0)
        return voice

    def get(self, name: str) -> Voice:
        """The stored voice, whichever replica created it (VoiceNotFound, VoiceUnusable)."""
        return self.store.read(name)

    def resolve(self, name: str) -> Voice:
        """The voice, for a request to use: also VoiceUnusable when another codec made its codes."""
        voice = self.store.read(name)
        if voice.codec != self.codec:
            raise VoiceUnusable(f"voice {name!r} was encoded with codec {voice.codec}, this server uses "
                                f"{self.codec}: create the voice again on this deployment")
        return voice

    def with_store(self, store: VoiceStore) -> VoiceRegistry:
        """A registry of the voices in another store (a tenant's, server/voices/tenants.py),
        with this one's encoder, tokenizer and limits."""
        return VoiceRegistry(store, self.limits, self._encoder, self._tokenizer)

    def page(self, after: str = "", limit: int | None = None) -> VoicePage:
        """Voices in name order, starting after the name `after`, at most `limit` of them."""
        names = [n for n in self.store.names() if n > after]
        page = names if limit is None else names[:limit]
        voices = self.store.read_many(page)
        more = limit is not None and len(names) > limit
        return VoicePage(voices=voices, next_after=page[-1] if more else "")

    def usage(self) -> VoiceUsage:
        return self.store.usage()

    def delete(self, name: str) -> bool:
        """False when there was no such voice. Requests already using it keep their copy."""
        deleted = self.store.delete(name)
        if deleted:
            log.info("deleted voice %r", name)
        return deleted

    def _check_count(self, usage: VoiceUsage) -> None:
        if usage.voices >= self.limits.max_voices:
            raise VoiceQuotaExceeded("voices", f"{usage.voices} voices are stored (limit {self.limits.max_voices}): "
                                               "delete some before creating more")

    def _text_tokens(self, segment: NewSegment) -> int:
        return len(self._tokenizer.encode_turn(segment.speaker, segment.text))

    def _check(self, name: str, segments: Sequence[NewSegment], description: str) -> list[Violation]:
        """The name and description, then the segments by the engine's rules for context segments
        (server/engine/rules.py), named `segments[i]...`; then whether they leave room to speak."""
        v = []
        if not valid_name(name):
            v.append(Violation("name", f"{name!r} is not a voice name: {NAME_RULE}"))
        if len(description) > MAX_DESCRIPTION_CHARS:
            v.append(Violation("description", f"{len(description)} characters; at most {MAX_DESCRIPTION_CHARS}"))
        if not segments:
            v.append(Violation("segments", "a voice needs at least one segment (text and audio)"))
        context = tuple(ContextSegment(s.speaker, s.text, s.audio.samples if s.audio else None,
                                       s.audio.sample_rate if s.audio else SAMPLE_RATE) for s in segments)
        v += [Violation(_segments_field(x.field), x.description) for x in rules.check_segments(context, self.limits.engine)]
        v += [Violation(f"segments[{i}].audio", "a voice segment needs its audio")
              for i, s in enumerate(segments) if s.audio is None]
        if v:
            return v
        estimate = 0  # prompt positions, audio frames estimated from the clips' lengths
        for seg in segments:
            frames = math.ceil(seg.audio.seconds * SAMPLE_RATE / FRAME_SAMPLES)
            estimate += segment_prompt_frames(self._text_tokens(seg), frames)
        return [self._too_long(estimate)] if estimate > self.limits.max_prompt_frames else []

    def _too_long(self, prompt_frames: int) -> Violation:
        return Violation("segments", f"the voice takes {prompt_frames} prompt positions; at most "
                                     f"{self.limits.max_prompt_frames} leave room to speak: use less or shorter audio")

    @staticmethod
    def _checked_codes(codes: np.ndarray, i: int) -> np.ndarray:
        if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS or codes.shape[1] == 0:
            raise ValueError(f"the encoder returned codes {list(codes.shape)} for segment {i}; "
                             f"expected [{NUM_CODEBOOKS}, frames]")
        if codes.min() < 0 or codes.max() >= MIMI_CODEBOOK_SIZE:
            raise ValueError(f"the encoder returned codes outside [0, {MIMI_CODEBOOK_SIZE}) for segment {i}")
        out = np.array(codes, dtype=np.int16)  # a private copy
        out.flags.writeable = False
        return out


def _segments_field(field: str) -> str:
    """The engine's `context[i]...` is the voice's `segments[i]...`."""
    split = rules.split_segment_field(field)
    if split is not None:
        return f"segments[{split[0]}]{split[1]}"
    return "segments" if field == "context" else field
