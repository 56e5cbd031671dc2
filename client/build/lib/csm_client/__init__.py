"""Python client of csm-serve (csm.v1): blocking and asyncio APIs, plus the csm-say CLI."""

from csm_client.aio_client import AsyncSpeechClient, AsyncSpeechStream
from csm_client.connection import Connection
from csm_client.request import ContextTurn, build_request
from csm_client.speech_client import SpeechClient, SpeechStream

__all__ = [
    "AsyncSpeechClient",
    "AsyncSpeechStream",
    "Connection",
    "ContextTurn",
    "SpeechClient",
    "SpeechStream",
    "build_request",
]
