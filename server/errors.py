"""The one place where what went wrong becomes a gRPC status.

Handlers raise domain exceptions (the engine's InvalidRequest / QueueFull / EngineUnavailable,
the voice registry's, and the few below); `StatusInterceptor` wraps every rpc, turns those
exceptions into statuses with google.rpc details, and reports each call's final code to
`on_done` (metrics). `status_proto` gives the same status as a google.rpc.Status message, for
errors sent inside a stream (ConverseResponse.error).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.engine.types import EngineUnavailable, InvalidRequest, QueueFull
from server.voices.types import VoiceExists, VoiceNotFound, VoiceQuotaExceeded, VoiceUnusable

log = logging.getLogger(__name__)


class Unauthenticated(Exception):
    """The call carries no valid bearer token (UNAUTHENTICATED)."""


class SynthesisFailed(Exception):
    """The engine ended this request with an error (INTERNAL); other requests are unaffected."""


class Unimplemented(Exception):
    """An rpc of the contract that this server does not serve yet (UNIMPLEMENTED)."""


class ConversationExpired(Exception):
    """A conversation reached the server's lifetime limit (RESOURCE_EXHAUSTED)."""


def to_status(exc: BaseException) -> grpc.Status | None:
    """The status for a domain exception; None for anything unexpected."""
    status = status_proto(exc)
    return rpc_status.to_status(status) if status is not None else None


def status_proto(exc: BaseException) -> status_pb2.Status | None:
    """The google.rpc.Status for a domain exception; None for anything unexpected."""
    if isinstance(exc, InvalidRequest):
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.violations
            ]
        )
        return _status(code_pb2.INVALID_ARGUMENT, f"invalid request: {exc}", details)
    if isinstance(exc, QueueFull):
        seconds = max(exc.retry_after_s, 0.0)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int(math.modf(seconds)[0] * 1e9))
        return _status(code_pb2.RESOURCE_EXHAUSTED, str(exc), error_details_pb2.RetryInfo(retry_delay=delay))
    if isinstance(exc, VoiceQuotaExceeded):
        quota = error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=exc.subject, description=str(exc))])
        return _status(code_pb2.RESOURCE_EXHAUSTED, str(exc), quota)
    simple = (
        (VoiceNotFound, code_pb2.NOT_FOUND),
        (VoiceExists, code_pb2.ALREADY_EXISTS),
        (VoiceUnusable, code_pb2.FAILED_PRECONDITION),
        (EngineUnavailable, code_pb2.UNAVAILABLE),
        (Unauthenticated, code_pb2.UNAUTHENTICATED),
        (SynthesisFailed, code_pb2.INTERNAL),
        (Unimplemented, code_pb2.UNIMPLEMENTED),
        (ConversationExpired, code_pb2.RESOURCE_EXHAUSTED),
    )
    for kind, code in simple:
        if isinstance(exc, kind):
            return _status(code, str(exc))
    return None


def _status(code: int, message: str, detail=None) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


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
