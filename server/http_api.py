"""OpenAI-compatible HTTP API beside csm.v1: the same engine, the same tokens, the same errors.

    POST /v1/audio/speech    OpenAI's speech request (server/openai_speech.py); the body streams
                             the audio as it is generated (stream_format "audio"), or as
                             server-sent events (stream_format "sse"), or is one exact file
                             (`stream: false`; FLAC by default)
    /v1/audio/voices[/{id}]  OpenAI's custom voices: POST (multipart), GET, DELETE
                             (server/openai_voices.py), on csm.v1.Voices' registry
    GET  /v1/models[/{id}]   the served model names
    GET  /health             200 while the process is up (liveness)
    GET  /ready              200 once the engine has warmed up, 503 before that and while draining
    GET  /                   the playground page (server/playground/)

A Starlette app, served by uvicorn on the gRPC server's event loop (server/app.py). Requests go
through the front door (server/front/door.py) like gRPC's: the same drain switch, voice lookup,
submission and delivery. Response headers leave with the first audio, not before: a request
that fails before it has any audio still gets its HTTP status. Every error is one of
server/errors.py's Failures, in OpenAI's JSON shape: a client's mistake is always a 4xx.
Every response, errors included, carries `x-request-id`: the caller's own, or one made here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from csm_core.constants import SAMPLE_RATE
from server.audio_encoding import make_encoder
from server.auth import BearerTokens
from server.engine.types import InvalidRequest, Violation
from server.errors import (
    DOMAIN_ERRORS, Failure, NotFound, RequestTooLarge, Unauthenticated, Unimplemented, describe,
)
from server.front.delivery import AudioDelivery, Piece
from server.front.door import FrontDoor
from server.metrics import Metrics
from server import playground
from server.openai_speech import SpeechRequest, in_api_terms, parse_speech_request
from server.openai_voices import MAX_FORM_BYTES, OpenAIVoices
from server.tempo import with_speed
from server.tenants import DEFAULT_TENANT

MAX_BODY_BYTES = 1024 * 1024  # a speech request is JSON text: OpenAI caps `input` at 4096 characters
# A 503 means this replica is draining, warming up or stopped: retry soon, through the load balancer
# to another replica (OpenAI's SDKs wait this long before their retry).
UNAVAILABLE_RETRY_AFTER_S = 1
OPEN_PATHS = ("/health", "/ready", playground.PATH)  # no token needed, like gRPC health (the page asks for one)
TENANT_SCOPE_KEY = "csm.tenant"  # the caller's tenant (server/tenants.py), set by _Gate; absent: no tokens
REQUEST_ID_SCOPE_KEY = "csm.request_id"  # the request's id, set by _Gate and sent back on every response
# OpenAI's error `type` and `code` for each HTTP status.
_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    503: ("server_error", "service_unavailable"),
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind, default_code = _ERROR_KINDS.get(status, ("invalid_request_error" if status < 500 else "server_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}


def failure_response(failure: Failure) -> JSONResponse:
    param = failure.violations[0].field if failure.violations else None
    headers = {}
    retry_after_s = failure.retry_after_s
    if retry_after_s is None and failure.http_status == 503:
        retry_after_s = UNAVAILABLE_RETRY_AFTER_S
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))  # whole seconds, as HTTP wants
        headers["retry-after-ms"] = str(round(retry_after_s * 1000))  # read by OpenAI's SDKs
    return JSONResponse(error_body(failure.http_status, failure.message, param), failure.http_status, headers)


class HttpApi:
    def __init__(self, door: FrontDoor, model_names: tuple[str, ...], tokens: BearerTokens | None = None,
                 voices: OpenAIVoices | None = None):
        """`voices`: the stored voices' routes (None: this server stores no voices, they answer 501)."""
        if not model_names:
            raise ValueError("the HTTP API needs at least one served model name")
        self._door = door
        self._engine = door.engine
        self.model_names = model_names
        self._created = int(time.time())
        self._voices = voices
        routes = [
            Route("/v1/audio/speech", self.speech, methods=["POST"]),
            Route("/v1/audio/voices", self.voices, methods=["GET", "POST"]),
            Route("/v1/audio/voices/{voice_id}", self.voice, methods=["GET", "DELETE"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            *playground.routes(),
        ]
        handlers = {kind: self._domain_error for kind in DOMAIN_ERRORS}
        handlers[HTTPException] = self._http_error
        handlers[Exception] = self._unexpected_error
        app = Starlette(routes=routes, exception_handlers=handlers)
        self.app: ASGIApp = _Gate(app, routes, door.metrics, tokens)

    # -- routes ---------------------------------------------------------------------------
    async def speech(self, request: Request) -> Response:
        arrival = time.monotonic()
        self._door.check_open()
        request_id = request.scope[REQUEST_ID_SCOPE_KEY]
        tenant = request.scope.get(TENANT_SCOPE_KEY, DEFAULT_TENANT)
        body = await _read_body(request, MAX_BODY_BYTES)
        speech = await asyncio.to_thread(self._parse, body, request_id, tenant)  # the voice lookup reads files
        try:
            sub = self._door.submit(tenant, speech.params, speech.voice)
        except InvalidRequest as exc:
            raise in_api_terms(exc) from None
        encoder = with_speed(make_encoder(speech.response_format.encoding, SAMPLE_RATE, whole=speech.whole),
                             speech.speed, SAMPLE_RATE)
        delivery = self._door.deliver(sub, encoder, sample_rate=SAMPLE_RATE, arrival=arrival)
        pieces = _api_terms(delivery.audio())
        if speech.whole:  # one exact file: any failure before its end is still an HTTP error
            try:
                data = b"".join([piece.data async for piece in pieces])
            finally:
                await pieces.aclose()
            return Response(data, media_type=speech.response_format.media_type, headers={"x-request-id": request_id})
        # The status line waits for the first audio, so a failure before it is still an HTTP error.
        first = await anext(pieces, None)
        # x-accel-buffering: nginx (ingress-nginx included) passes the audio on as it comes.
        headers = {"x-request-id": request_id, "x-accel-buffering": "no"}
        if speech.stream_format == "sse":
            return StreamingResponse(_sse(first, pieces, delivery), media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        return StreamingResponse(_audio(first, pieces), media_type=speech.response_format.media_type,
                                 headers=headers)

    def _parse(self, body: bytes, request_id: str, tenant: str) -> SpeechRequest:
        return parse_speech_request(_json(body), models=self.model_names, request_id=request_id,
                                    limits=self._door.limits, voices=self._door.voices, tenant=tenant)

    async def voices(self, request: Request) -> Response:
        tenant = request.scope.get(TENANT_SCOPE_KEY, DEFAULT_TENANT)
        if request.method == "GET":
            return await self._voice_routes().list(request, tenant)
        self._door.check_open("create the voice")
        voices = self._voice_routes()
        return await voices.create(request, tenant, await _read_body(request, MAX_FORM_BYTES))

    async def voice(self, request: Request) -> Response:
        tenant = request.scope.get(TENANT_SCOPE_KEY, DEFAULT_TENANT)
        routes = self._voice_routes()
        return await (routes.get if request.method == "GET" else routes.delete)(request, tenant)

    def _voice_routes(self) -> OpenAIVoices:
        if self._voices is None:
            raise Unimplemented("this server stores no voices (csm-serve --voices-dir sets where they are kept)")
        return self._voices

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card(name) for name in self.model_names]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.model_names:
            raise NotFound(f"the model `{name}` does not exist on this server; it serves {', '.join(self.model_names)}")
        return JSONResponse(self._model_card(name))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if not self._door.accepting:
            return JSONResponse({"status": "draining"}, 503)
        if not self._engine.ready:
            return JSONResponse({"status": "warming up"}, 503)
        return JSONResponse({"status": "ready"})

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self._created, "owned_by": "csm-serve",
                "root": self._engine.info().model_source}

    # -- errors ---------------------------------------------------------------------------
    async def _domain_error(self, request: Request, exc: Exception) -> Response:
        return failure_response(describe(exc))

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        """No such route (404) or method (405), worded as OpenAI words it."""
        message = (f"Invalid URL ({request.method} {request.url.path}): this server serves "
                   "POST /v1/audio/speech, GET and POST /v1/audio/voices, GET and DELETE /v1/audio/voices/{id}, "
                   "GET /v1/models, GET /health and GET /ready")
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    async def _unexpected_error(self, request: Request, exc: Exception) -> Response:
        """A bug: Starlette re-raises it after this response, so uvicorn logs the traceback."""
        return JSONResponse(error_body(500, "internal error; the server log has the cause"), 500)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdecimal() and int(declared) > limit:
        raise RequestTooLarge(f"the request body is {declared} bytes; this server accepts at most {limit}")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise RequestTooLarge(f"the request body is larger than {limit} bytes")
    return bytes(body)


def _json(body: bytes):
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidRequest([Violation("body", f"nests arrays or objects deeper than this server reads "
                                                f"(about {sys.getrecursionlimit()} levels)")]) from None
    except ValueError as exc:
        raise InvalidRequest([Violation("body", f"is not valid JSON: {exc}")]) from None


async def _api_terms(pieces: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    """The pieces; a request found invalid once decoded names this API's fields."""
    try:
        async for piece in pieces:
            yield piece
    except InvalidRequest as exc:
        raise in_api_terms(exc) from None
    finally:
        await pieces.aclose()


async def _audio(first: Piece | None, pieces: AsyncIterator[Piece]) -> AsyncIterator[bytes]:
    """The encoded audio as the response body. A failure after the headers have left can only
    cut the connection, so that the client sees an incomplete body rather than a short file."""
    try:
        if first is not None:
            yield first.data
        async for piece in pieces:
            yield piece.data
    finally:
        await pieces.aclose()


async def _sse(first: Piece | None, pieces: AsyncIterator[Piece], delivery: AudioDelivery) -> AsyncIterator[bytes]:
    """OpenAI's speech events: `speech.audio.delta` with base64 audio, then `speech.audio.done`
    with usage (input tokens: prompt positions; output tokens: generated 80 ms frames)."""
    try:
        if first is not None:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(first.data).decode()})
        async for piece in pieces:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(piece.data).decode()})
    except DOMAIN_ERRORS as exc:
        failure = describe(exc)
        yield _event({"type": "error", **error_body(failure.http_status, failure.message)})
        return
    finally:
        await pieces.aclose()
    result = delivery.result
    usage = {"input_tokens": result.prompt_frames, "output_tokens": result.frames,
             "total_tokens": result.prompt_frames + result.frames}
    yield _event({"type": "speech.audio.done", "usage": usage})


def _event(data: dict) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Gate:
    """ASGI middleware in front of the routes: gives the request its id (the caller's
    `x-request-id`, or a new one: REQUEST_ID_SCOPE_KEY) and puts it on every response, checks
    bearer tokens (except on OPEN_PATHS), puts the token's tenant in the scope
    (TENANT_SCOPE_KEY), and counts every response by route template and status."""

    def __init__(self, app: ASGIApp, routes: list[Route], metrics: Metrics, tokens: BearerTokens | None):
        self._app = app
        self._routes = routes
        self._metrics = metrics
        self._tokens = tokens

    def _route(self, scope: Scope) -> str:
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return route.path
        return "unmatched"  # one label for every unknown path: no unbounded label values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500  # what the client sees if the app fails before starting a response
        request_id = Request(scope).headers.get("x-request-id") or uuid.uuid4().hex
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        start = time.monotonic()

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode("latin-1", "replace")))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            if self._tokens is not None and scope["path"] not in OPEN_PATHS:
                try:
                    scope[TENANT_SCOPE_KEY] = self._tokens.tenant(Request(scope).headers.get("authorization"))
                except Unauthenticated as exc:
                    await failure_response(describe(exc))(scope, receive, counted_send)
                    return
            await self._app(scope, receive, counted_send)
        finally:
            self._metrics.observe_http(self._route(scope), status, time.monotonic() - start)
