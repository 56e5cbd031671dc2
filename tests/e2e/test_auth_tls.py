"""Bearer tokens, TLS and mutual TLS, with certificates made by the test (openssl CLI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from csm_client import Connection, SpeechClient
from server.auth import load_tokens

from .harness import LoopbackServer

TOKENS = ("first-secret", "second-secret")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=directory)


def make_leaf(directory: Path, name: str, ca: str, san: str) -> None:
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(d, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    make_leaf(d, "client", "ca", "DNS:csm-test-client")
    make_leaf(d, "stranger", "other-ca", "DNS:csm-test-stranger")
    return d


@pytest.fixture(scope="module")
def tls_server(engine, certs):
    server = LoopbackServer(engine, tls_cert=str(certs / "server.pem"), tls_key=str(certs / "server.key"),
                            auth_tokens=TOKENS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(engine, certs):
    server = LoopbackServer(engine, tls_cert=str(certs / "server.pem"), tls_key=str(certs / "server.key"),
                            tls_client_ca=str(certs / "ca.pem")).start()
    yield server
    server.stop()


def info_code(connection: Connection) -> grpc.StatusCode:
    with SpeechClient(connection=connection) as client:
        try:
            client.model_info(timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_tls_with_a_valid_token_streams_speech(tls_server, certs):
    connection = Connection(target=tls_server.target, ca_cert=str(certs / "ca.pem"), token=TOKENS[1])
    with SpeechClient(connection=connection) as client:
        call = client.stream("Over TLS.", max_audio_ms=240, seed=1, timeout=120)
        assert list(call) and call.result.frames > 0


@pytest.mark.parametrize("token", [None, "wrong-secret", ""])
def test_missing_or_wrong_token_is_unauthenticated(tls_server, certs, token):
    before = tls_server.metrics()
    connection = Connection(target=tls_server.target, ca_cert=str(certs / "ca.pem"), token=token)
    assert info_code(connection) is grpc.StatusCode.UNAUTHENTICATED
    with SpeechClient(connection=connection) as client:
        with pytest.raises(grpc.RpcError) as streamed:
            list(client.stream("No entry.", timeout=30))
    assert streamed.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "token" in streamed.value.details()
    key = 'csm:grpc_requests_total{code="UNAUTHENTICATED",method="csm.v1.Speech/Synthesize"}'
    assert tls_server.metrics()[key] == before.get(key, 0) + 1


def test_a_token_needs_the_bearer_scheme(tls_server, certs):
    credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        rpc = channel.unary_unary("/csm.v1.Speech/GetModelInfo")
        with pytest.raises(grpc.RpcError) as refused:
            rpc(b"", metadata=(("authorization", f"Basic {TOKENS[0]}"),), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_health_is_open_and_reflection_needs_a_token(tls_server, certs):
    credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="csm.v1.Speech"),
                                                           timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_tls_refuses_plaintext_and_untrusted_servers(tls_server, certs):
    assert info_code(Connection(target=tls_server.target, token=TOKENS[0])) is grpc.StatusCode.UNAVAILABLE
    untrusting = Connection(target=tls_server.target, ca_cert=str(certs / "other-ca.pem"), token=TOKENS[0])
    assert info_code(untrusting) is grpc.StatusCode.UNAVAILABLE


def test_mtls_admits_only_clients_signed_by_the_client_ca(mtls_server, certs):
    def connection(name: str | None) -> Connection:
        cert = dict(client_cert=str(certs / f"{name}.pem"), client_key=str(certs / f"{name}.key")) if name else {}
        return Connection(target=mtls_server.target, ca_cert=str(certs / "ca.pem"), **cert)

    assert info_code(connection("client")) is grpc.StatusCode.OK
    assert info_code(connection(None)) is grpc.StatusCode.UNAVAILABLE
    assert info_code(connection("stranger")) is grpc.StatusCode.UNAVAILABLE


def test_tokens_load_from_a_file_and_the_environment_list(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# ops team\nalpha\n\n  beta  \n")
    assert load_tokens(str(path), "gamma, alpha,") == ("alpha", "beta", "gamma")
    empty = tmp_path / "empty"
    empty.write_text("# nothing here yet\n")
    with pytest.raises(ValueError, match="no token"):
        load_tokens(str(empty), None)
