"""A request that names a voice: the voice's segments, as pre-encoded codes, open its context.

The engine receives them as ContextSegment(codes=...), holding the voice's own read-only
arrays: deleting the voice later does not touch a request that has them. Torch-free.
"""

from __future__ import annotations

import dataclasses

from server.engine import rules
from server.engine.types import ContextSegment, InvalidRequest, SynthesisParams, Violation
from server.voices.types import Voice


def voice_context(voice: Voice) -> tuple[ContextSegment, ...]:
    return tuple(ContextSegment(speaker=s.speaker, text=s.text, codes=s.codes) for s in voice.segments)


def with_voice(params: SynthesisParams, voice: Voice) -> SynthesisParams:
    """The voice's segments first, then the request's own context."""
    return dataclasses.replace(params, context=voice_context(voice) + params.context)


def blame_request_fields(error: InvalidRequest, voice: Voice) -> InvalidRequest:
    """The engine names fields of the combined context (voice segments first); name the
    request's own fields instead: `voice` for the voice's segments, `context[i]` for its own."""
    n = len(voice.segments)

    def blamed(v: Violation) -> Violation:
        if v.field == "context":
            return Violation("context", f"{v.description} (the {n} segments of voice {voice.name!r} included)")
        split = rules.split_segment_field(v.field)
        if split is None:
            return v
        i, rest = split
        return Violation("voice" if i < n else f"context[{i - n}]{rest}", v.description)

    return InvalidRequest([blamed(v) for v in error.violations])
