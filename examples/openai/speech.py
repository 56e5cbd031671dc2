"""OpenAI's official Python SDK against csm-serve's HTTP API (POST /v1/audio/speech).

    python examples/openai/speech.py hello.flac
Server: $CSM_HTTP_URL (default http://localhost:8000); API key: $CSM_TOKEN (any string when the
server has no tokens). CSM's own fields (seed, max_audio_ms) go through extra_body.
"""

import os
import sys

from openai import OpenAI

path = sys.argv[1] if len(sys.argv) > 1 else "hello.flac"
client = OpenAI(base_url=os.environ.get("CSM_HTTP_URL", "http://localhost:8000") + "/v1",
                api_key=os.environ.get("CSM_TOKEN") or "unused")
with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="0", input="Hello from CSM.", response_format=path.rsplit(".", 1)[-1],
        extra_body={"seed": 7, "max_audio_ms": 2000}) as response:
    response.stream_to_file(path)
print(f"{path}: request {response.headers.get('x-request-id')}")
