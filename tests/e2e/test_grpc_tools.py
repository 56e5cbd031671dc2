"""Standard gRPC tools, unmodified, against a live server: grpcurl lists, describes and calls every
service, method and message through reflection; ghz load-tests through reflection (no protoset)
and from the .proto file (proto3 `optional` fields included); the jq examples of docs/api.md
print what they promise. The binaries are pinned in scripts/k8s-tools.env and built by
scripts/install_tools.sh; without them the tests skip, except under CI, where they fail."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import wave
from pathlib import Path

import pytest

from google.rpc import status_pb2

from csm_wire import speech_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("CSM_TOOLS_DIR")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "csm-serve" / "tools")


def tool(name: str) -> str:
    path = TOOLS / "bin" / name
    if not path.is_file():
        message = f"{path} not found: run scripts/install_tools.sh (or set CSM_TOOLS_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


def grpcurl(server, *args: str, data: dict | None = None) -> str:
    command = [tool("grpcurl"), "-plaintext"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    done = subprocess.run([*command, server.target, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def json_stream(text: str) -> list[dict]:
    """grpcurl prints one JSON document per message, pretty-printed, one after another."""
    decoder, messages, position = json.JSONDecoder(), [], 0
    while position < len(text.strip()):
        message, end = decoder.raw_decode(text, position)
        messages.append(message)
        position = end + len(text[end:]) - len(text[end:].lstrip())
    return messages


def symbols() -> list[str]:
    """Every service, method, message (nested too) and enum of csm.v1."""
    file = pb.DESCRIPTOR
    names = []
    for service in file.services_by_name.values():
        names += [service.full_name, *(m.full_name for m in service.methods)]

    def messages(descriptors):
        for m in descriptors:
            names.append(m.full_name)
            names.extend(e.full_name for e in m.enum_types)
            messages(m.nested_types)

    messages(file.message_types_by_name.values())
    names += [e.full_name for e in file.enum_types_by_name.values()]
    return names


def test_grpcurl_lists_and_describes_every_symbol_through_reflection(server):
    services = grpcurl(server, "list").split()
    assert {"csm.v1.Speech", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
    assert grpcurl(server, "list", "csm.v1.Speech").split() == [
        "csm.v1.Speech.Converse", "csm.v1.Speech.GetModelInfo", "csm.v1.Speech.Synthesize",
        "csm.v1.Speech.SynthesizeUnary"]
    described = symbols()
    assert "csm.v1.Speech.Synthesize" in described and "csm.v1.Sampling" in described
    for symbol in described:
        out = grpcurl(server, "describe", symbol)
        assert out.startswith(f"{symbol} is a"), out
    assert "rpc Synthesize ( .csm.v1.SynthesizeRequest ) returns ( stream .csm.v1.SynthesizeResponse )" in \
        grpcurl(server, "describe", "csm.v1.Speech.Synthesize")
    assert "optional uint64 seed" in grpcurl(server, "describe", "csm.v1.Sampling")


def test_grpcurl_calls_every_method_through_reflection(server):
    info = json.loads(grpcurl(server, "csm.v1.Speech/GetModelInfo"))
    assert info["preset"] == "tiny" and info["sample_rate"] == 24000
    health = json.loads(grpcurl(server, "grpc.health.v1.Health/Check", data={"service": "csm.v1.Speech"}))
    assert health == {"status": "SERVING"}
    request = {"text": "Hello there.", "max_audio_ms": 400, "sampling": {"seed": 7}}
    *chunks, last = json_stream(grpcurl(server, "csm.v1.Speech/Synthesize", data=request))
    assert chunks and all("audio" in c for c in chunks) and last["result"]["frames"] > 0
    unary = json.loads(grpcurl(server, "csm.v1.Speech/SynthesizeUnary",
                               data={**request, "output": {"encoding": "AUDIO_ENCODING_WAV"}}))
    with wave.open(io.BytesIO(base64.b64decode(unary["audio"]))) as w:
        assert w.getnframes() == int(unary["result"]["audio_samples"])


def test_the_docs_jq_examples_print_what_they_promise(server):
    """docs/api.md's grpcurl | jq lines, run as written (host and port replaced)."""
    if subprocess.run(["which", "jq"], capture_output=True).returncode != 0:
        pytest.skip("jq is not installed (scripts/install_tools.sh installs it)")
    api = (ROOT / "docs" / "api.md").read_text()
    stream_line = next(line for line in api.splitlines() if "Speech/Synthesize |" in line)
    previous = api.splitlines()[api.splitlines().index(stream_line) - 1]
    command = (previous.rstrip("\\").rstrip() + " " + stream_line.strip()).replace("localhost:50051", server.target)
    command = command.replace("grpcurl ", f"{tool('grpcurl')} ", 1)
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    *chunks, result = lines
    assert [c["sequence"] for c in chunks] == [str(i) for i in range(len(chunks))]
    assert all(c["start_ms"] is not None and c["duration_ms"] > 0 for c in chunks)
    assert result["frames"] > 0 and result["finish_reason"].startswith("FINISH_REASON_")


@pytest.mark.parametrize("source", ["reflection", "proto"])
def test_ghz_load_runs_through_reflection_and_from_the_proto(server, source):
    command = [tool("ghz"), "--insecure", "--call", "csm.v1.Speech/Synthesize", "-n", "4", "-c", "2",
               "--timeout", "120s", "--format", "json",
               "-d", json.dumps({"text": "Load.", "max_audio_ms": 240, "sampling": {"seed": 7, "temperature": 0.8}})]
    if source == "proto":
        # speech.proto imports google/rpc/status.proto, shipped by googleapis-common-protos
        googleapis = Path(status_pb2.__file__).parents[2]
        command += ["--proto", str(ROOT / "protos" / "csm" / "v1" / "speech.proto"),
                    "--import-paths", f"{ROOT / 'protos'},{googleapis}"]
    done = subprocess.run([*command, server.target], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["count"] == 4 and report["statusCodeDistribution"] == {"OK": 4}, report.get("errorDistribution")
