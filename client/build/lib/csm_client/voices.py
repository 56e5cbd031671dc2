"""Building csm.v1.Voices requests from plain Python values."""

from __future__ import annotations

from collections.abc import Sequence

from csm_client.request import ContextTurn
from csm_wire import voices_pb2 as vpb


def create_voice_request(name: str, segments: Sequence[ContextTurn], description: str = "") -> vpb.CreateVoiceRequest:
    """Every segment needs its audio (ContextTurn.from_file) and the transcript of that audio."""
    return vpb.CreateVoiceRequest(name=name, segments=[s.to_proto() for s in segments], description=description)
