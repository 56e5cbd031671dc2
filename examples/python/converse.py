"""Python SDK: a conversation whose context stays on the server (csm.v1 Converse). A user's
turn goes into the context, then two replies: one whole, one whose text streams in (as from an
LLM). Each reply is written to its own WAV file.

    python examples/python/converse.py out_dir
Server: $CSM_SERVER (host:port, default localhost:50051); token: $CSM_TOKEN (optional).
"""

import os
import sys
from collections import defaultdict
from pathlib import Path

from csm_client import SpeechClient
from csm_client.errors import explain_status
from csm_wire import wav

out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "replies")
out_dir.mkdir(parents=True, exist_ok=True)

with SpeechClient(os.environ.get("CSM_SERVER", "localhost:50051"), token=os.environ.get("CSM_TOKEN")) as client:
    conv = client.converse(speaker=0, encoding="pcm", seed=7, max_audio_ms=1000, timeout=120)
    conv.add_context("Where is the station?", speaker=1)       # what the user said (audio optional)
    conv.speak("Turn left at the second light.")                # a reply, text known in full
    conv.speak("", more_text=True)                               # a reply whose text streams in
    for piece in ["Anything ", "else? ", "I am happy ", "to help."]:
        conv.send_text(piece)
    conv.send_text("", end_of_turn=True)
    conv.close()                                                 # no more turns

    audio = defaultdict(bytearray)
    for message in conv:                                         # csm.v1 ConverseResponse, in order
        kind = message.WhichOneof("kind")
        if kind == "audio":
            audio[message.turn_id] += message.audio.data
        elif kind == "result":
            path = out_dir / f"{message.turn_id}.wav"
            samples = audio.pop(message.turn_id, b"")
            path.write_bytes(wav.header(24_000, len(samples)) + samples)
            print(f"{path}: {message.result.audio_ms / 1000:.2f} s of audio")
        elif kind == "error":
            print(f"{message.turn_id} failed: {explain_status(message.error)}", file=sys.stderr)
