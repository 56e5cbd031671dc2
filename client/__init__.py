"""Python client of csm-serve (csm.v1): blocking and asyncio APIs, plus the csm-say CLI."""

from client.aio_client import AsyncSpeechClient, AsyncSpeechStream
from client.connection import Connection
from client.request import ContextTurn, build_request
from client.speech_client import SpeechClient, SpeechStream

__all__ = [
    "AsyncSpeechClient",
    "AsyncSpeechStream",
    "Connection",
    "ContextTurn",
    "SpeechClient",
    "SpeechStream",
    "build_request",
]
