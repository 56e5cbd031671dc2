"""The one place where what went wrong becomes a status, for gRPC and for HTTP alike.

Handlers raise domain exceptions (the engine's InvalidRequest / QueueFull / EngineUnavailable,
and the few below); `describe` maps each to a `Failure` (gRPC code, HTTP status, message,
field violations, retry delay) from one table. `StatusInterceptor` wraps every rpc, turns
those exceptions into statuses with google.rpc details, and reports each call's final code to
`on_done` (metrics); the HTTP API (server/http_api.py) writes the same Failure as OpenAI's
JSON error.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.engine.types import EngineUnavailable, InvalidRequest, QueueFull, Violation

log = logging.getLogger(__name__)


class Unauthenticated(Exception):
    """The call carries no valid bearer token (UNAUTHENTICATED)."""


class NotFound(Exception):
    """The request names something this server does not serve, e.g. an unknown model (NOT_FOUND)."""


class RequestTooLarge(Exception):
    """The request body is larger than the server accepts (HTTP 413)."""


class SynthesisFailed(Exception):
    """The engine ended this request with an error (INTERNAL); other requests are unaffected."""


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong, in terms every transport can state: gRPC and HTTP map the same exceptions."""

    grpc_code: int  # google.rpc.Code
    http_status: int
    message: str
    violations: tuple[Violation, ...] = ()
    retry_after_s: float | None = None


# The one table from domain exceptions to statuses.
_FAILURES: tuple[tuple[type[Exception], int, int], ...] = (
    (InvalidRequest, code_pb2.INVALID_ARGUMENT, 400),
    (Unauthenticated, code_pb2.UNAUTHENTICATED, 401),
    (NotFound, code_pb2.NOT_FOUND, 404),
    (RequestTooLarge, code_pb2.RESOURCE_EXHAUSTED, 413),
    (QueueFull, code_pb2.RESOURCE_EXHAUSTED, 429),
    (SynthesisFailed, code_pb2.INTERNAL, 500),
    (EngineUnavailable, code_pb2.UNAVAILABLE, 503),
)


def describe(exc: BaseException) -> Failure | None:
    """The failure a domain exception stands for; None for anything unexpected (a bug)."""
    for kind, grpc_code, http_status in _FAILURES:
        if isinstance(exc, kind):
            break
    else:
        return None
    if isinstance(exc, InvalidRequest):
        return Failure(grpc_code, http_status, f"invalid request: {exc}", tuple(exc.violations))
    if isinstance(exc, QueueFull):
        return Failure(grpc_code, http_status, str(exc), retry_after_s=max(exc.retry_after_s, 0.0))
    return Failure(grpc_code, http_status, str(exc))


def to_status(exc: BaseException) -> grpc.Status | None:
    """The gRPC status for a domain exception, with google.rpc details; None for anything unexpected."""
    failure = describe(exc)
    if failure is None:
        return None
    detail = None
    if failure.violations:
        detail = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in failure.violations
        ])
    elif failure.retry_after_s is not None:
        seconds = failure.retry_after_s
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int(math.modf(seconds)[0] * 1e9))
        detail = error_details_pb2.RetryInfo(retry_delay=delay)
    return _status(failure.grpc_code, failure.message, detail)


def _status(code: int, message: str, detail=None) -> grpc.Status:
    status = status_pb2.Status(code=code, message=message)
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


async def _abort(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    status = to_status(exc)
    if status is None:
        log.exception("unexpected error in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has the cause")
    await context.abort_with_status(status)


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError) or context.cancelled():
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


OnDone = Callable[[str, grpc.StatusCode], None]


def _wrap(behavior, method: str, on_done: OnDone):
    """The same behavior, with domain exceptions mapped and the final code reported."""
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request, context):
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:
                error = exc
                if not isinstance(exc, grpc.aio.AbortError):
                    await _abort(exc, context, method)
                raise
            except BaseException as exc:
                error = exc
                raise
            finally:
                on_done(method, _final_code(context, error))

        return streaming

    async def unary(request, context):
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except Exception as exc:
            error = exc
            if not isinstance(exc, grpc.aio.AbortError):
                await _abort(exc, context, method)
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            on_done(method, _final_code(context, error))

    return unary


class StatusInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, on_done: OnDone):
        self._on_done = on_done

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.lstrip("/")
        return rewrap(handler, lambda behavior: _wrap(behavior, method, self._on_done))


def rewrap(handler: grpc.RpcMethodHandler, change: Callable) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serializers whose behavior is `change(old_behavior)`."""
    common = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(change(handler.unary_unary), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(change(handler.unary_stream), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(change(handler.stream_unary), **common)
    return grpc.stream_stream_rpc_method_handler(change(handler.stream_stream), **common)
