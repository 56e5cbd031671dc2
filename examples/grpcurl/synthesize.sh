#!/usr/bin/env bash
# grpcurl (no .proto needed: the server has reflection): one WAV file in one call, then a
# conversation whose replies are written as WAV files, one per turn.
#   bash examples/grpcurl/synthesize.sh out_dir
# Server: $CSM_SERVER (host:port, default localhost:50051), plaintext; needs grpcurl, jq, base64.
set -euo pipefail
server=${CSM_SERVER:-localhost:50051}
out=${1:-.}
mkdir -p "$out"
auth=()
if [ -n "${CSM_TOKEN:-}" ]; then auth=(-H "authorization: Bearer $CSM_TOKEN"); fi

grpcurl -plaintext "${auth[@]}" -d '{"text": "Hello from CSM.", "max_audio_ms": 1000,
  "sampling": {"seed": 7}, "output": {"encoding": "AUDIO_ENCODING_WAV"}}' \
  "$server" csm.v1.Speech/SynthesizeUnary | jq -r .audio | base64 -d > "$out/hello.wav"
echo "$out/hello.wav"

# Converse: one JSON message per request on standard input; the replies come back as 16-bit PCM
# chunks tagged with their turn id, joined here into one WAV per turn.
grpcurl -plaintext "${auth[@]}" -d @ "$server" csm.v1.Speech/Converse > "$out/converse.json" <<'JSON'
{"config": {"maxAudioMs": 800, "sampling": {"seed": 7}, "output": {"encoding": "AUDIO_ENCODING_PCM_S16LE"}}}
{"context": {"turnId": "user-1", "segment": {"speaker": 1, "text": "Where is the station?"}}}
{"speak": {"turnId": "reply-1", "text": "Turn left at the second light."}}
JSON
jq -r 'select(.audio) | .audio.data' "$out/converse.json" | base64 -d > "$out/reply-1.pcm"
python3 - "$out/reply-1.pcm" "$out/reply-1.wav" <<'PY'
import sys, wave
pcm = open(sys.argv[1], "rb").read()
with wave.open(sys.argv[2], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(24000); w.writeframes(pcm)
PY
echo "$out/reply-1.wav"
