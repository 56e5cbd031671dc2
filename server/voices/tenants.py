"""Each tenant's voices (server/tenants.py): a VoiceRegistry per tenant, over a directory of its
own, so that a tenant lists, reads, uses and deletes only its own voices, may name one as another
tenant does, and has --max-voices and --max-voice-bytes to itself. Torch-free.

    <voices-dir>/<name>.safetensors                    the default tenant (a server without tokens)
    <voices-dir>/tenants/<tenant>/<name>.safetensors   every other tenant

A voice another tenant holds is, to a caller, exactly a voice that does not exist (NOT_FOUND):
lookups never leave the caller's directory.
"""

from __future__ import annotations

import threading
from pathlib import Path

from server.tenants import DEFAULT_TENANT, valid_tenant
from server.voices.registry import VoiceRegistry
from server.voices.store import VoiceStore

TENANTS_DIR = "tenants"


def tenant_directory(root: Path, tenant: str) -> Path:
    """Where a tenant's voices live under the voices directory `root`."""
    if tenant == DEFAULT_TENANT:
        return root
    if not valid_tenant(tenant):  # a tenant id is one safe path component, or no directory at all
        raise ValueError(f"{tenant!r} is not a tenant id")
    return root / TENANTS_DIR / tenant


class TenantVoices:
    """One registry per tenant, made at the tenant's first lookup."""

    def __init__(self, root: VoiceRegistry):
        """`root`: the voices directory's registry, the default tenant's; the others share its
        encoder, tokenizer and limits."""
        self._root = root
        self._lock = threading.Lock()
        self._registries = {DEFAULT_TENANT: root}

    def of(self, tenant: str) -> VoiceRegistry:
        """The tenant's registry (its directory is created if need be: OSError)."""
        with self._lock:
            registry = self._registries.get(tenant)
            if registry is None:
                directory = tenant_directory(self._root.store.directory, tenant)
                registry = self._registries[tenant] = self._root.with_store(VoiceStore(directory))
            return registry
