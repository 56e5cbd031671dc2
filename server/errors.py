"""The one place where what went wrong becomes a status, for gRPC and for HTTP alike.

Handlers raise domain exceptions (the engine's InvalidRequest / QueueFull / EngineUnavailable,
the voice registry's, and the few below); `describe` maps each to a `Failure` (gRPC code, HTTP
status, message, field violations, retry delay, quota) from one table. `StatusInterceptor`
wraps every rpc, turns those exceptions into statuses with google.rpc details, turns request
bytes that do not parse into INVALID_ARGUMENT, and reports each call's final code to `on_done`
(metrics); `status_proto` gives the same status as a google.rpc.Status message, for errors
sent inside a stream (ConverseResponse.error); the HTTP API (server/http_api.py) writes the
same Failure as OpenAI's JSON error.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.engine.types import EngineUnavailable, InvalidRequest, QueueFull, Violation
from server.malformed import Malformed, explain
from server.voices.types import VoiceExists, VoiceNotFound, VoiceQuotaExceeded, VoiceUnusable

log = logging.getLogger(__name__)


class Unauthenticated(Exception):
    """The call carries no valid bearer token (UNAUTHENTICATED)."""


class NotFound(Exception):
    """The request names something this server does not serve, e.g. an unknown model (NOT_FOUND)."""


class RequestTooLarge(Exception):
    """The request body is larger than the server accepts (HTTP 413)."""


class SynthesisFailed(Exception):
    """The engine ended this request with an error (INTERNAL); other requests are unaffected."""


class ReaderTooSlow(Exception):
    """The caller read its stream too slowly for too long (RESOURCE_EXHAUSTED: the server's buffer)."""


class Unimplemented(Exception):
    """An rpc of the contract that this server does not serve yet (UNIMPLEMENTED)."""


class ConversationExpired(Exception):
    """A conversation reached the server's lifetime limit (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong, in terms every transport can state: gRPC and HTTP map the same exceptions."""

    grpc_code: int  # google.rpc.Code
    http_status: int
    message: str
    violations: tuple[Violation, ...] = ()
    retry_after_s: float | None = None
    quota_subject: str | None = None  # the quota that was exceeded (google.rpc.QuotaFailure)


# The one table from domain exceptions to statuses.
_FAILURES: tuple[tuple[type[Exception], int, int], ...] = (
    (InvalidRequest, code_pb2.INVALID_ARGUMENT, 400),
    (Unauthenticated, code_pb2.UNAUTHENTICATED, 401),
    (NotFound, code_pb2.NOT_FOUND, 404),
    (VoiceNotFound, code_pb2.NOT_FOUND, 404),
    (VoiceExists, code_pb2.ALREADY_EXISTS, 409),
    (VoiceUnusable, code_pb2.FAILED_PRECONDITION, 400),
    (RequestTooLarge, code_pb2.RESOURCE_EXHAUSTED, 413),
    (QueueFull, code_pb2.RESOURCE_EXHAUSTED, 429),
    (VoiceQuotaExceeded, code_pb2.RESOURCE_EXHAUSTED, 429),
    (ReaderTooSlow, code_pb2.RESOURCE_EXHAUSTED, 429),
    (ConversationExpired, code_pb2.RESOURCE_EXHAUSTED, 429),
    (SynthesisFailed, code_pb2.INTERNAL, 500),
    (Unimplemented, code_pb2.UNIMPLEMENTED, 501),
    (EngineUnavailable, code_pb2.UNAVAILABLE, 503),
)
DOMAIN_ERRORS: tuple[type[Exception], ...] = tuple(kind for kind, _, _ in _FAILURES)


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
    if isinstance(exc, VoiceQuotaExceeded):
        return Failure(grpc_code, http_status, str(exc), quota_subject=exc.subject)
    return Failure(grpc_code, http_status, str(exc))


def status_proto(exc: BaseException) -> status_pb2.Status | None:
    """The google.rpc.Status for a domain exception, with its details; None for anything unexpected."""
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
    elif failure.quota_subject is not None:
        detail = error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=failure.quota_subject, description=failure.message)])
    status = status_pb2.Status(code=failure.grpc_code, message=failure.message)
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def to_status(exc: BaseException) -> grpc.Status | None:
    """The gRPC status for a domain exception; None for anything unexpected."""
    status = status_proto(exc)
    return rpc_status.to_status(status) if status is not None else None


async def _abort(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    status = to_status(exc)
    if status is None:
        log.exception("unexpected error in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has the cause")
    await context.abort_with_status(status)


# A call that ends this close to its deadline, or after it, ended because of it (the deadline
# cancels the call a moment before the handler notices).
DEADLINE_SLACK_S = 0.05


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None,
                deadline: float | None) -> grpc.StatusCode:
    """The status the caller saw: its deadline or its cancellation when the call ended that way
    (whatever the handler did after: an abort on a call already cancelled reaches nobody), else
    the code the handler set (abort), OK, or INTERNAL for an unexpected error (what _abort sends)."""
    cancelled = context.cancelled() or isinstance(error, asyncio.CancelledError)
    if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S and (error or cancelled):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if cancelled:
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.INTERNAL


OnDone = Callable[[str, grpc.StatusCode], None]


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def _parsed(requests: AsyncIterator) -> AsyncIterator:
    """A request stream whose malformed messages raise InvalidRequest."""
    async for request in requests:
        yield _checked(request)


def _checked(request):
    if isinstance(request, Malformed):
        raise InvalidRequest(request.violations)
    return request


def _wrap(behavior, method: str, on_done: OnDone, streamed_requests: bool):
    """The same behavior, with malformed requests and domain exceptions mapped to statuses and
    the final code reported."""
    prepare = _parsed if streamed_requests else _checked
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request, context):
            error: BaseException | None = None
            deadline = _deadline(context)
            try:
                async for response in behavior(prepare(request), context):
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
                on_done(method, _final_code(context, error, deadline))

        return streaming

    async def unary(request, context):
        error: BaseException | None = None
        deadline = _deadline(context)
        try:
            return await behavior(prepare(request), context)
        except Exception as exc:
            error = exc
            if not isinstance(exc, grpc.aio.AbortError):
                await _abort(exc, context, method)
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            on_done(method, _final_code(context, error, deadline))

    return unary


def tolerant(deserializer: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """A request deserializer that never raises: bytes that do not parse become Malformed
    (grpc would answer UNKNOWN with the exception's class)."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)

    def parse(data: bytes) -> object:
        try:
            return deserializer(data)
        except DecodeError:
            return explain(descriptor, data)

    return parse


class StatusInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, on_done: OnDone):
        self._on_done = on_done

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.lstrip("/")
        streamed = bool(handler.stream_unary or handler.stream_stream)
        return rewrap(handler, lambda behavior: _wrap(behavior, method, self._on_done, streamed),
                      request_deserializer=tolerant(handler.request_deserializer))


def rewrap(handler: grpc.RpcMethodHandler, change: Callable,
           request_deserializer: Callable | None = None) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serializers (or this request deserializer) whose behavior
    is `change(old_behavior)`."""
    common = dict(
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(change(handler.unary_unary), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(change(handler.unary_stream), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(change(handler.stream_unary), **common)
    return grpc.stream_stream_rpc_method_handler(change(handler.stream_stream), **common)
