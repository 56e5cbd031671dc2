"""Python client of csm-serve (csm.v1): blocking and asyncio APIs, plus the csm-say and csm-voice CLIs."""

from csm_client.aio_client import AsyncSpeechClient, AsyncSpeechStream
from csm_client.connection import Connection
from csm_client.conversation import AsyncConversation, Conversation
from csm_client.request import ContextTurn, build_request
from csm_client.speech_client import SpeechClient, SpeechStream

__all__ = [
    "AsyncConversation",
    "AsyncSpeechClient",
    "AsyncSpeechStream",
    "Connection",
    "ContextTurn",
    "Conversation",
    "SpeechClient",
    "SpeechStream",
    "build_request",
]
