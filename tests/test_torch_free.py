"""The gRPC layer and the client never import torch (the engine alone owns tensors)."""

import subprocess
import sys

MODULES = ["csm_wire", "csm_client", "csm_client.csm_say", "csm_client.loadtest", "server.servicer", "server.app", "server.validation", "server.audio_encoding",
           "server.metrics", "server.auth", "server.errors", "server.http_api", "server.openai_speech", "server.delivery",
           "server.listeners", "server.reflection", "server.tempo"]


def test_servicer_server_app_and_client_import_without_torch():
    code = f"import sys\nfor m in {MODULES!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False", "one of these modules pulls in torch: keep tensors in server/engine"
