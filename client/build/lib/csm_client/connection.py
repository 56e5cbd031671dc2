"""How a client reaches a csm-serve: address, TLS (optionally with a client certificate), token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a unary response carries the whole utterance


@dataclass(slots=True, frozen=True)
class Connection:
    target: str = DEFAULT_TARGET  # host:port
    token: str | None = None  # sent as "authorization: Bearer <token>" on every call
    tls: bool = False  # implied by any of the certificate options below
    ca_cert: str | None = None  # PEM file of the CA that signed the server; None: system roots
    client_cert: str | None = None  # PEM files of this client's certificate and key (mTLS)
    client_key: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("a client certificate needs both client_cert and client_key")

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.ca_cert or self.client_cert)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_cert),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self) -> grpc.Channel:
        if self.secure:
            return grpc.secure_channel(self.target, self.credentials(), options=self.options())
        return grpc.insecure_channel(self.target, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.secure:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=self.options())
        return grpc.aio.insecure_channel(self.target, options=self.options())
