"""The one voice lookup of every front end. Torch-free; its methods block (they read the voices
directory), so callers run them off the event loop.

    stored(tenant, name)   a stored voice of the tenant by name (csm.v1 `voice`, Converse `config.voice`)
    choose(tenant, name)   the OpenAI API's `voice`: a stored voice of the tenant by name first, then a
                           speaker id "0".."max_speaker_id" (ASCII digits), then one of OpenAI's names
                           (speaker 0)

A tenant finds only its own voices (server/voices/tenants.py): another tenant's voice of that
name is answered as a voice that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.engine.types import InvalidRequest, Violation
from server.voices.registry import VoiceRegistry
from server.voices.tenants import TenantVoices
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
        """`registry`: the voices directory's (None when the server stores no voices)."""
        self._voices = TenantVoices(registry) if registry is not None else None
        self._max_speaker_id = max_speaker_id

    @property
    def stores_voices(self) -> bool:
        return self._voices is not None

    def stored(self, tenant: str, name: str) -> Voice:
        """Raises VoiceNotFound, or VoiceUnusable (another codec made it, or its file is damaged)."""
        if self._voices is None:
            raise VoiceNotFound(f"there is no voice {name!r}: this server stores no voices")
        return self._voices.of(tenant).resolve(name)

    def choose(self, tenant: str, name: str, field: str = "voice") -> VoiceChoice:
        """A stored voice speaks as its last segment's speaker. Raises InvalidRequest naming
        `field` when `name` is none of the three, VoiceUnusable for a damaged stored voice."""
        if self._voices is not None and valid_name(name):
            try:
                voice = self._voices.of(tenant).resolve(name)
                return VoiceChoice(voice.segments[-1].speaker, voice)
            except VoiceNotFound:
                pass
        if name.isascii() and name.isdecimal() and int(name) <= self._max_speaker_id:
            return VoiceChoice(int(name))
        if name.lower() in OPENAI_VOICES:
            return VoiceChoice(0)
        stored = "the name of a stored voice, " if self._voices is not None else ""
        raise InvalidRequest([Violation(field, f"unknown voice {name!r}: use {stored}a speaker id "
                                               f"0..{self._max_speaker_id} or one of {', '.join(OPENAI_VOICES)} "
                                               "(speaker 0)")])
