"""Bearer-token authentication: `authorization: Bearer <token>` on every call, gRPC or HTTP, and
the tenant each token belongs to (server/tenants.py).

Health checks stay open (load balancers and Kubernetes probes send no token); every other
service, reflection included, needs a token when tokens are configured. The HTTP API checks
its `Authorization` header with the same `BearerTokens`.

Tokens are given as entries (a line of --auth-tokens-file, an item of CSM_AUTH_TOKENS):

    <token>            a token with a tenant of its own (named by the token's hash)
    <tenant>:<token>   a token of the named tenant; several tokens may name one tenant

A token is printable ASCII without spaces (what an `authorization` header carries); a tenant
name follows server/tenants.py's TENANT_RULE. No error message quotes a token.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import inspect
from collections.abc import Iterable
from pathlib import Path

import grpc

from server.errors import Unauthenticated, rewrap
from server.tenants import DEFAULT_TENANT, TENANT_RULE, token_tenant, valid_tenant_name

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)

# The tenant of the gRPC call being handled. grpc.aio runs each call in a task of its own, and the
# interceptor sets it inside the call's handler, so a value never outlives its call.
_CALLER_TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("csm_caller_tenant", default=DEFAULT_TENANT)


def caller_tenant() -> str:
    """The tenant of the gRPC call being handled, as its token names it; DEFAULT_TENANT on a
    server without tokens. Read it on the call's own task, before handing work to a thread."""
    return _CALLER_TENANT.get()


def parse_entry(entry: str) -> tuple[str, str]:
    """(tenant, token) of one entry, `<token>` or `<tenant>:<token>`. ValueError says what is
    wrong without quoting the token."""
    entry = entry.strip()
    name, colon, token = entry.partition(":")
    if not colon:
        name, token = "", entry
    if not token:
        raise ValueError("holds no token: write `<token>` or `<tenant>:<token>`")
    if not all("!" <= c <= "~" for c in token):
        raise ValueError("has a token with a space or a character outside printable ASCII: write `<token>` or "
                         "`<tenant>:<token>`")
    if not colon:
        return token_tenant(token), token
    if not valid_tenant_name(name):
        raise ValueError(f"does not start with a tenant name before ':' ({TENANT_RULE})")
    return name, token


def tenants_by_token(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """token -> tenant from (where, entry) pairs; ValueError naming `where` for a bad entry or a
    token given to two tenants."""
    out: dict[str, str] = {}
    for where, entry in entries:
        try:
            tenant, token = parse_entry(entry)
        except ValueError as exc:
            raise ValueError(f"{where} {exc}") from None
        if out.setdefault(token, tenant) != tenant:
            raise ValueError(f"{where} gives a token to a second tenant: a token belongs to one tenant")
    return out


def load_tokens(tokens_file: str | None, env_tokens: str | None) -> tuple[str, ...]:
    """Entries from a file (one per line; blank lines and '#' comments skipped) and a comma list,
    checked (ValueError naming the line), in order, without repeats."""
    entries: list[tuple[str, str]] = []
    if tokens_file:
        path = Path(tokens_file)
        if not path.is_file():
            raise ValueError(f"auth tokens file {tokens_file!r} does not exist")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append((f"auth tokens file {tokens_file!r}, line {number},", line))
        if not entries:
            raise ValueError(f"auth tokens file {tokens_file!r} holds no token (one token per line)")
    if env_tokens:
        items = [t.strip() for t in env_tokens.split(",")]
        entries += [(f"CSM_AUTH_TOKENS item {number}", t) for number, t in enumerate(items, 1) if t]
    tenants_by_token(entries)
    return tuple(dict.fromkeys(entry for _, entry in entries))


class BearerTokens:
    """The accepted tokens and their tenants, checked the same way for gRPC metadata and HTTP headers."""

    def __init__(self, entries: Iterable[str]):
        """`entries`: `<token>` or `<tenant>:<token>` each (ValueError for a bad one)."""
        tenants = tenants_by_token((f"auth token entry {i}", e) for i, e in enumerate(entries, 1))
        if not tenants:
            raise ValueError("BearerTokens needs at least one token")
        # Digests, so that every comparison takes the same time whatever a token's length.
        self._tokens = tuple((_digest(token), tenant) for token, tenant in tenants.items())
        self.tenants = frozenset(tenants.values())

    def tenant(self, authorization: str | None) -> str:
        """The tenant of the token in an `authorization` value ('Bearer <token>'); raises
        Unauthenticated saying what is wrong."""
        if authorization is None:
            raise Unauthenticated("this server requires a token: send the header (metadata) "
                                  "'authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization must read 'Bearer <token>'")
        presented = _digest(token.strip())
        # Compare against every token so the time taken does not reveal which one matched.
        found = [tenant for digest, tenant in self._tokens if hmac.compare_digest(presented, digest)]
        if not found:
            raise Unauthenticated("the bearer token is not valid for this server")
        return found[0]

    def problem(self, authorization: str | None) -> str | None:
        """What is wrong with an `authorization` value, or None when it may pass."""
        try:
            self.tenant(authorization)
        except Unauthenticated as exc:
            return str(exc)
        return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call without a valid token (UNAUTHENTICATED); runs the others' handlers with
    their token's tenant as `caller_tenant()`."""

    def __init__(self, tokens: BearerTokens):
        self._tokens = tokens

    def _tenant(self, metadata) -> str:
        values = [str(v) for k, v in metadata or () if k == "authorization"]
        return self._tokens.tenant(values[0] if values else None)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        try:
            tenant = self._tenant(handler_call_details.invocation_metadata)
        except Unauthenticated as exc:
            problem = str(exc)
            return rewrap(handler, lambda behavior: _refuse(behavior, problem))
        return rewrap(handler, lambda behavior: _as_tenant(behavior, tenant))


def _as_tenant(behavior, tenant: str):
    """The same behavior, run with `tenant` as caller_tenant()."""
    if inspect.isasyncgenfunction(behavior):

        async def stream_as_tenant(request, context):
            _CALLER_TENANT.set(tenant)
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return stream_as_tenant

    async def as_tenant(request, context):
        _CALLER_TENANT.set(tenant)
        return await behavior(request, context)

    return as_tenant


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
