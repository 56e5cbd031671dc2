"""The csm.v1 contract: committed generated code is current, and every element is documented."""

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

import google.rpc.status_pb2
import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "protos" / "csm_wire"
PROTO = "csm/v1/speech.proto"
PROTOS = (PROTO, "csm/v1/voices.proto")
GOOGLEAPIS = Path(google.rpc.status_pb2.__file__).parents[2]  # google/rpc/status.proto


def test_committed_python_code_matches_the_protos(tmp_path):
    subprocess.run([str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh = {p.name: p.read_bytes() for p in tmp_path.glob("*_pb2*")}
    committed = {p.name: p.read_bytes() for p in GENERATED.glob("*_pb2*")}
    assert sorted(fresh) == sorted(committed), "protos/csm_wire holds other generated files than scripts/gen_protos.sh writes"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"protos/csm_wire/{stale} differ from the protos: run scripts/gen_protos.sh and commit the result"


@pytest.mark.parametrize("path", PROTOS)
def test_every_rpc_message_field_and_enum_value_has_a_comment(tmp_path, path):
    out = tmp_path / "csm.desc"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"-I{GOOGLEAPIS}",
                    "--include_source_info", f"--descriptor_set_out={out}", path], check=True)
    (proto,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    comments = {
        tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip()
        for loc in proto.source_code_info.location
    }
    # Source-info paths: 4 message_type, 2 field; 5 enum_type, 2 value; 6 service, 2 method.
    elements = {}
    for i, service in enumerate(proto.service):
        elements.update({(6, i, 2, j): f"rpc {m.name}" for j, m in enumerate(service.method)})
    for i, message in enumerate(proto.message_type):
        elements[(4, i)] = f"message {message.name}"
        elements.update({(4, i, 2, j): f"{message.name}.{f.name}" for j, f in enumerate(message.field)})
    for i, enum in enumerate(proto.enum_type):
        elements[(5, i)] = f"enum {enum.name}"
        elements.update({(5, i, 2, j): v.name for j, v in enumerate(enum.value)})
    undocumented = [name for path, name in elements.items() if not comments.get(path)]
    assert not undocumented, f"add a comment to: {undocumented}"


def test_generated_code_serves_the_versioned_package():
    from csm_wire import speech_pb2, voices_pb2

    assert speech_pb2.DESCRIPTOR.name == PROTO  # what reflection serves
    assert speech_pb2.DESCRIPTOR.services_by_name["Speech"].full_name == "csm.v1.Speech"
    assert voices_pb2.DESCRIPTOR.services_by_name["Voices"].full_name == "csm.v1.Voices"
