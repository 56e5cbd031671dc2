"""The gRPC layer and the client never import torch (the engine alone owns tensors)."""

import subprocess
import sys

MODULES = ["csm_wire", "csm_client", "csm_client.csm_say", "csm_client.csm_voice", "csm_client.conversation",
           "csm_client.loadtest", "server.servicer", "server.app", "server.proto_convert", "server.engine.types",
           "server.engine.rules", "server.audio_encoding", "server.metrics", "server.auth", "server.errors",
           "server.cli", "server.voices.registry", "server.voices.store", "server.voices.servicer",
           "server.voices.synthesis", "server.voices.wire", "server.voices.create_queue", "csm_core.ogg_opus", "server.http_api", "server.openai_speech",
           "server.front.delivery", "server.front.door", "server.front.voices", "server.front.engine_client", "server.listeners", "server.reflection", "server.tempo", "server.malformed",
           "server.engine.scheduler", "server.engine.prefix_cache", "server.engine.context_window",
           "server.engine.conversation", "server.converse.call", "server.converse.sentences", "server.converse.turns"]


def test_servicer_server_app_and_client_import_without_torch():
    code = f"import sys\nfor m in {MODULES!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False", "one of these modules pulls in torch: keep tensors in server/engine"
