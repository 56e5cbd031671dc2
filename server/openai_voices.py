"""OpenAI's custom voices over HTTP, on csm.v1.Voices' registry and rules. Torch-free.

    POST   /v1/audio/voices         multipart: `audio_sample` (a mono recording), `transcript` (what
                                    it says: CSM needs it), `name`; optional `speaker`, `description`;
                                    OpenAI's `consent` and `type` ("audio_sample") are accepted
    GET    /v1/audio/voices         the tenant's voices, in name order (`limit`, `after`)
    GET    /v1/audio/voices/{id}    one voice
    DELETE /v1/audio/voices/{id}    404 when there is none, as OpenAI answers

A voice's `id` is its name, so `/v1/audio/speech` takes it as `voice` or `{"id": ...}`. The same
tenant's registry as csm.v1.Voices (server/voices/tenants.py), the same decoding and limits
(server/voices/wire.py: each clip decoded only up to what a voice may hold), and the same
CreateVoice queue (server/voices/create_queue.py): one encoder, a bounded number waiting.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from csm_wire import speech_pb2 as pb
from server.engine.types import InvalidRequest, Violation
from server.voices.create_queue import CreateQueue
from server.voices.tenants import TenantVoices
from server.voices.types import NAME_RULE, Voice, VoiceNotFound, valid_name
from server.voices.wire import decode_segments

# OpenAI caps `audio_sample` at 10 MiB; room for the form's other fields and its boundaries.
MAX_SAMPLE_BYTES = 10 * 1024 * 1024
MAX_FORM_BYTES = MAX_SAMPLE_BYTES + 64 * 1024
MAX_TEXT_FIELD_BYTES = 16 * 1024  # transcript, name, description, consent: text, not audio
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
# The form's fields as csm.v1's CreateVoiceRequest names them, for the rules' messages.
_WIRE_FIELDS = {"segments[0].audio": "audio_sample", "segments[0].audio.encoding": "audio_sample",
                "segments[0].audio.sample_rate": "audio_sample", "segments[0].text": "transcript",
                "segments[0].speaker": "speaker", "segments[0]": "audio_sample", "segments": "audio_sample",
                "name": "name", "description": "description"}


@dataclass(frozen=True, slots=True)
class _NewVoice:
    name: str
    segment: pb.Segment
    description: str


def voice_object(voice: Voice) -> dict:
    """OpenAI's `audio.voice`, with what csm.v1's Voice adds."""
    return {"id": voice.name, "object": "audio.voice", "name": voice.name, "type": "audio_sample",
            "created_at": int(voice.created_at), "description": voice.description, "audio_ms": voice.audio_ms,
            "prompt_frames": voice.prompt_frames, "content_hash": voice.content_hash}


class OpenAIVoices:
    def __init__(self, tenants: TenantVoices, creates: CreateQueue):
        """`tenants`, `creates`: csm.v1.Voices' own (server/app.py hands both the same)."""
        self._tenants = tenants
        self._creates = creates

    async def create(self, request: Request, tenant: str, body: bytes) -> Response:
        new = await _read_form(request, body)
        voice = await self._creates.run(self._create, tenant, new)
        return JSONResponse(voice_object(voice))

    async def list(self, request: Request, tenant: str) -> Response:
        after = request.query_params.get("after", "")
        limit_text = request.query_params.get("limit", str(DEFAULT_LIST_LIMIT))
        violations = []
        if after and not valid_name(after):
            violations.append(Violation("after", "must be the id of a voice (from an earlier page's last_id)"))
        if not limit_text.isascii() or not limit_text.isdecimal() or not 1 <= int(limit_text) <= MAX_LIST_LIMIT:
            violations.append(Violation("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}"))
        if violations:
            raise InvalidRequest(violations)
        page = await asyncio.to_thread(lambda: self._tenants.of(tenant).page(after=after, limit=int(limit_text)))
        data = [voice_object(v) for v in page.voices]
        return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": bool(page.next_after)})

    async def get(self, request: Request, tenant: str) -> Response:
        name = request.path_params["voice_id"]
        voice = await asyncio.to_thread(lambda: self._tenants.of(tenant).get(name))
        return JSONResponse(voice_object(voice))

    async def delete(self, request: Request, tenant: str) -> Response:
        name = request.path_params["voice_id"]
        if not await asyncio.to_thread(lambda: self._tenants.of(tenant).delete(name)):
            raise VoiceNotFound(f"there is no voice {name!r}")
        return JSONResponse({"id": name, "object": "audio.voice.deleted", "deleted": True})

    def _create(self, tenant: str, new: _NewVoice) -> Voice:
        registry = self._tenants.of(tenant)
        try:
            segments = decode_segments([new.segment], registry.limits)
            return registry.create(new.name, segments, new.description)
        except InvalidRequest as exc:
            raise InvalidRequest([Violation(_WIRE_FIELDS.get(v.field, v.field), v.description)
                                  for v in exc.violations]) from None


async def _read_form(request: Request, body: bytes) -> _NewVoice:
    """The multipart form (already read, bounded) as a new voice; every problem at once."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest([Violation("body", "must be multipart/form-data with `audio_sample`, `transcript` and "
                                                "`name` (curl -F, or the OpenAI SDK's audio.voices.create)")])

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16,
                                                         max_part_size=MAX_TEXT_FIELD_BYTES)
    except Exception as exc:  # Starlette's MultiPartException, or a malformed body python-multipart refuses
        raise InvalidRequest([Violation("body", f"is not a multipart form this server can read: {exc}")]) from None
    try:
        violations: list[Violation] = []

        def text(name: str, required: bool = False) -> str:
            value = form.get(name)
            if value is None or value == "":
                if required:
                    violations.append(Violation(name, "is required"))
                return ""
            if not isinstance(value, str):
                violations.append(Violation(name, "must be a text field, not a file"))
                return ""
            return value

        name = text("name", required=True)
        if name and not valid_name(name):
            violations.append(Violation("name", f"{name!r} is not a voice name: {NAME_RULE}"))
        transcript = text("transcript", required=True)
        description = text("description")
        speaker_text = text("speaker") or "0"
        kind = text("type") or "audio_sample"
        text("consent")  # accepted: this server keeps no consent recordings (docs/api.md)
        if kind != "audio_sample":
            violations.append(Violation("type", f"{kind!r} is not supported: CSM clones a voice from an "
                                                "`audio_sample` only"))
        speaker = 0
        if not speaker_text.isascii() or not speaker_text.isdecimal():
            violations.append(Violation("speaker", f"must be a speaker id (an integer), got {speaker_text!r}"))
        else:
            speaker = int(speaker_text)
        sample = form.get("audio_sample")
        data = b""
        if not isinstance(sample, UploadFile):
            violations.append(Violation("audio_sample", "is required: a file field with a mono WAV, FLAC or Ogg "
                                                        "recording"))
        else:
            data = await sample.read()
        if violations:
            raise InvalidRequest(violations)
        # The rules of csm.v1 CreateVoice from here on (speaker range, text, audio, name, quotas).
        segment = pb.Segment(speaker=min(speaker, 2**32 - 1), text=transcript, audio=pb.AudioInput(data=data))
        return _NewVoice(name, segment, description)
    finally:
        await form.close()
