"""Where voices are stored and how many: csm-serve's --voices-dir, --max-voices, --max-voice-bytes,
and how many CreateVoice calls one server takes at once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# CreateVoice calls one server holds at once, the one encoding and those waiting for it; more
# are refused with RESOURCE_EXHAUSTED and a retry delay (server/voices/create_queue.py)
MAX_PENDING_CREATES = 8


def default_voices_dir() -> str:
    """$XDG_CACHE_HOME/csm-serve/voices, or ~/.cache/csm-serve/voices."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "csm-serve", "voices")


@dataclass(slots=True, frozen=True)
class VoicesConfig:
    directory: str = field(default_factory=default_voices_dir)  # shared by every replica that mounts it
    # The limits count one tenant's voices, in its own directory (server/voices/tenants.py).
    max_voices: int = 1000  # voices stored in the directory, all replicas together
    max_bytes: int = 256 * 1024 * 1024  # bytes of all voice files (a 20 s voice takes ~16 KB)
    max_pending_creates: int = MAX_PENDING_CREATES

    def __post_init__(self) -> None:
        if not self.directory:
            raise ValueError("--voices-dir must not be empty")
        if self.max_voices < 0:
            raise ValueError("--max-voices must be >= 0 (0 refuses new voices)")
        if self.max_bytes < 0:
            raise ValueError("--max-voice-bytes must be >= 0")
        if self.max_pending_creates < 1:
            raise ValueError("max_pending_creates must be >= 1")

    @property
    def path(self) -> Path:
        return Path(self.directory).expanduser()
