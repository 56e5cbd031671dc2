"""The one voice lookup of every front end. Torch-free; its methods block (they read the voices
directory), so callers run them off the event loop.

    stored(name)   a stored voice by name (csm.v1 `voice`, Converse `config.voice`)
    choose(name)   the OpenAI API's `voice`: a stored voice by name first, then a speaker id
                   "0".."max_speaker_id" (ASCII digits), then one of OpenAI's names (speaker 0)
"""

from __future__ import annotations

from dataclasses import dataclass

from server.engine.types import InvalidRequest, Violation
from server.voices.registry import VoiceRegistry
from server.voices.types import Voice, VoiceNotFound, valid_name

# OpenAI's built-in voices. CSM has no fixed voices: a speaker id is a role in the conversation
# and the voice comes from the context and the seed. These names speak as speaker 0 (unless a
# voice is stored under the name), so that clients that default to one of them work unchanged.
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")


@dataclass(frozen=True, slots=True)
class VoiceChoice:
    speaker: int  # the speaker the request speaks as
    voice: Voice | None = None  # the stored voice whose segments open its context


class VoiceLookup:
    def __init__(self, registry: VoiceRegistry | None, max_speaker_id: int):
        """`registry`: None when the server stores no voices."""
        self._registry = registry
        self._max_speaker_id = max_speaker_id

    @property
    def stores_voices(self) -> bool:
        return self._registry is not None

    def stored(self, name: str) -> Voice:
        """Raises VoiceNotFound, or VoiceUnusable (another codec made it, or its file is damaged)."""
        if self._registry is None:
            raise VoiceNotFound(f"there is no voice {name!r}: this server stores no voices")
        return self._registry.resolve(name)

    def choose(self, name: str, field: str = "voice") -> VoiceChoice:
        """A stored voice speaks as its last segment's speaker. Raises InvalidRequest naming
        `field` when `name` is none of the three, VoiceUnusable for a damaged stored voice."""
        if self._registry is not None and valid_name(name):
            try:
                voice = self._registry.resolve(name)
                return VoiceChoice(voice.segments[-1].speaker, voice)
            except VoiceNotFound:
                pass
        if name.isascii() and name.isdecimal() and int(name) <= self._max_speaker_id:
            return VoiceChoice(int(name))
        if name.lower() in OPENAI_VOICES:
            return VoiceChoice(0)
        stored = "the name of a stored voice, " if self._registry is not None else ""
        raise InvalidRequest([Violation(field, f"unknown voice {name!r}: use {stored}a speaker id "
                                               f"0..{self._max_speaker_id} or one of {', '.join(OPENAI_VOICES)} "
                                               "(speaker 0)")])
