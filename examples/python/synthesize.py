"""Python SDK: stream one utterance into a WAV file as it is generated.

    python examples/python/synthesize.py "Hello from CSM." hello.wav
Server: $CSM_SERVER (host:port, default localhost:50051); token: $CSM_TOKEN (optional).
"""

import os
import sys

from csm_client import SpeechClient
from csm_wire import wav

text = sys.argv[1] if len(sys.argv) > 1 else "Hello from CSM."
path = sys.argv[2] if len(sys.argv) > 2 else "hello.wav"

with SpeechClient(os.environ.get("CSM_SERVER", "localhost:50051"), token=os.environ.get("CSM_TOKEN")) as client:
    samples = bytearray()
    stream = client.stream(text, speaker=0, seed=7, encoding="pcm", max_audio_ms=2000)
    for chunk in stream:  # AudioChunk messages, as they are generated
        samples += chunk.data
    with open(path, "wb") as out:
        out.write(wav.header(24_000, len(samples)) + samples)
    print(f"{path}: {stream.result.audio_ms / 1000:.2f} s of audio, {stream.result.frames} frames")
