"""Tenants: who a request belongs to. A bearer token names a tenant (server/auth.py); a tenant's
voices live in a namespace of their own (server/voices/tenants.py) and its prompts' prefix-cache
blocks are its own (server/engine/prefix_cache.py). Torch-free, grpc-free.

    DEFAULT_TENANT ""            a server without tokens: one tenant, the voices directory's root
    "alice"                      a name the tokens file gives (`alice:<token>`), shared by its tokens
    "token-3f2a9c0d1b7e4a65"     a token listed alone: a tenant of its own, named by its hash

A tenant id is never secret and never the token: it appears in paths and may appear in logs.
"""

from __future__ import annotations

import hashlib
import re

DEFAULT_TENANT = ""  # the one tenant of a server without tokens
# Like voice names: lowercase ASCII, so that tenant directories never collide on case-insensitive
# filesystems and a name is safe as one path component.
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DERIVED_PREFIX = "token-"  # reserved for the tenants of tokens listed without a name
TENANT_RULE = (f"1 to 64 characters from a-z, 0-9, '-' and '_', starting with a letter or a digit, and not "
               f"starting with {DERIVED_PREFIX!r}")


def valid_tenant_name(name: str) -> bool:
    """A name an operator may give a tenant in the tokens file."""
    return TENANT_PATTERN.fullmatch(name) is not None and not name.startswith(DERIVED_PREFIX)


def valid_tenant(tenant: str) -> bool:
    """A tenant id other than the default: a given name, or one token_tenant derived."""
    return TENANT_PATTERN.fullmatch(tenant) is not None


def token_tenant(token: str) -> str:
    """The tenant of a token listed without a name: DERIVED_PREFIX and 16 hex digits of a SHA-256
    of the token: the same on every replica and after every restart. A one-way hash: it does not
    give away a token drawn at random (a guessable token is weak whatever is logged)."""
    return DERIVED_PREFIX + hashlib.sha256(b"csm-tenant/1\0" + token.encode()).hexdigest()[:16]
