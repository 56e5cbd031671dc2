"""Readable messages for failed calls, with the server's google.rpc details spelled out."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The BadRequest details of an INVALID_ARGUMENT error: field path -> what is wrong."""
    out: dict[str, str] = {}
    for detail in _details(error):
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def retry_after_s(error: grpc.RpcError) -> float | None:
    """The RetryInfo delay of a RESOURCE_EXHAUSTED error, in seconds."""
    for detail in _details(error):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def explain(error: grpc.RpcError) -> str:
    code = error.code()
    lines = [f"{code.name}: {error.details()}"]
    for field, description in field_violations(error).items():
        lines.append(f"  {field}: {description}")
    delay = retry_after_s(error)
    if delay is not None:
        lines.append(f"  the server asks to retry after {delay:.1f} s")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        lines.append("  the server needs a valid bearer token")
    elif code is grpc.StatusCode.UNAVAILABLE:
        lines.append("  is the server running, warmed up and reachable at that address (and TLS matching)?")
    return "\n".join(lines)


def _details(error: grpc.RpcError):
    status = rpc_status.from_call(error)
    return status.details if status is not None else ()
