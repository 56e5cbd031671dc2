"""Readable messages for failed calls, with the server's google.rpc details spelled out.

Each function takes a failed call (grpc.RpcError) or a google.rpc.Status message, the form a
failed conversation turn arrives in (ConverseResponse.error).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

Failure = grpc.RpcError | status_pb2.Status


def field_violations(error: Failure) -> dict[str, str]:
    """The BadRequest details of an INVALID_ARGUMENT error: field path -> what is wrong."""
    out: dict[str, str] = {}
    for detail in _details(error):
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def retry_after_s(error: Failure) -> float | None:
    """The RetryInfo delay of a RESOURCE_EXHAUSTED error, in seconds."""
    for detail in _details(error):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def quota_violations(error: Failure) -> dict[str, str]:
    """The QuotaFailure details of a RESOURCE_EXHAUSTED error: which limit ("voices", "bytes") -> why."""
    out: dict[str, str] = {}
    for detail in _details(error):
        quota = error_details_pb2.QuotaFailure()
        if detail.Unpack(quota):
            out.update({v.subject: v.description for v in quota.violations})
    return out


def explain(error: grpc.RpcError) -> str:
    code = error.code()
    lines = [f"{code.name}: {error.details()}", *_detail_lines(error)]
    if code is grpc.StatusCode.UNAUTHENTICATED:
        lines.append("  the server needs a valid bearer token")
    elif code is grpc.StatusCode.UNAVAILABLE:
        lines.append("  is the server running, warmed up and reachable at that address (and TLS matching)?")
    return "\n".join(lines)


def explain_status(status: status_pb2.Status) -> str:
    """The same for a google.rpc.Status message (a failed conversation turn)."""
    return "\n".join([f"{_code_name(status.code)}: {status.message}", *_detail_lines(status)])


def _detail_lines(error: Failure) -> list[str]:
    lines = [f"  {field}: {description}" for field, description in field_violations(error).items()]
    if quota_violations(error):
        lines.append("  a storage limit of the server was reached")
    delay = retry_after_s(error)
    if delay is not None:
        lines.append(f"  the server asks to retry after {delay:.1f} s")
    return lines


def _code_name(code: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")


def _details(error: Failure):
    if isinstance(error, status_pb2.Status):
        return error.details
    status = rpc_status.from_call(error)
    return status.details if status is not None else ()
