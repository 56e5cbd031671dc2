"""gRPC server reflection that also answers for methods, so grpcurl and ghz work unmodified.

grpcio-reflection answers `file_containing_symbol` with `DescriptorPool.FindFileContainingSymbol`.
protobuf's default (upb) pool resolves messages, their fields, enums, enum values and services
there, but not methods: `csm.v1.Speech.Synthesize` raises KeyError, so `grpcurl describe
csm.v1.Speech.Synthesize` fails and ghz, which resolves its `--call` that way, cannot find any
method. The pool handed to reflection here resolves a method to its service's file.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection

SERVICE_NAME = reflection.SERVICE_NAME


class MethodAwarePool:
    """A descriptor pool whose FindFileContainingSymbol also knows `package.Service.Method`."""

    def __init__(self, pool: descriptor_pool.DescriptorPool):
        self._pool = pool

    def __getattr__(self, name: str):
        return getattr(self._pool, name)  # every other lookup is the pool's own

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:  # noqa: N802 (protobuf's name)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is None or method not in service.methods_by_name:
                raise
            return service.file


def enable(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serves reflection for `service_names` (plus reflection itself) from the default pool."""
    reflection.enable_server_reflection(
        (*service_names, SERVICE_NAME), server, pool=MethodAwarePool(descriptor_pool.Default()))
