"""Bearer-token authentication: `authorization: Bearer <token>` on every call, gRPC or HTTP.

Health checks stay open (load balancers and Kubernetes probes send no token); every other
service, reflection included, needs a token when tokens are configured. The HTTP API checks
its `Authorization` header with the same `BearerTokens`.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Iterable
from pathlib import Path

import grpc

from server.errors import Unauthenticated, rewrap

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def load_tokens(tokens_file: str | None, env_tokens: str | None) -> tuple[str, ...]:
    """Tokens from a file (one per line; blank lines and '#' comments skipped) and a comma list."""
    tokens: list[str] = []
    if tokens_file:
        path = Path(tokens_file)
        if not path.is_file():
            raise ValueError(f"auth tokens file {tokens_file!r} does not exist")
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
        if not tokens:
            raise ValueError(f"auth tokens file {tokens_file!r} holds no token (one token per line)")
    if env_tokens:
        tokens.extend(t.strip() for t in env_tokens.split(",") if t.strip())
    return tuple(dict.fromkeys(tokens))


class BearerTokens:
    """The accepted tokens, checked the same way for gRPC metadata and HTTP headers."""

    def __init__(self, tokens: Iterable[str]):
        self._tokens = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ValueError("BearerTokens needs at least one token")

    def problem(self, authorization: str | None) -> str | None:
        """What is wrong with an `authorization` value ('Bearer <token>'), or None when it may pass."""
        if authorization is None:
            return "this server requires a token: send the header (metadata) 'authorization: Bearer <token>'"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "the authorization must read 'Bearer <token>'"
        presented = token.strip().encode()
        # Compare against every token so the time taken does not reveal which one matched.
        matches = [hmac.compare_digest(presented, t) for t in self._tokens]
        return None if any(matches) else "the bearer token is not valid for this server"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: BearerTokens):
        self._tokens = tokens

    def _problem(self, metadata) -> str | None:
        values = [str(v) for k, v in metadata or () if k == "authorization"]
        return self._tokens.problem(values[0] if values else None)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        problem = self._problem(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        return rewrap(handler, lambda behavior: _refuse(behavior, problem))


def _refuse(behavior, problem: str):
    """A behavior of the same shape (coroutine or async generator) that raises Unauthenticated."""
    if inspect.isasyncgenfunction(behavior):

        async def refuse_stream(request, context):
            raise Unauthenticated(problem)
            yield  # makes this an async generator, like the behavior it replaces

        return refuse_stream

    async def refuse(request, context):
        raise Unauthenticated(problem)

    return refuse
