"""Where voices are stored and how many: csm-serve's --voices-dir, --max-voices, --max-voice-bytes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


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

    def __post_init__(self) -> None:
        if not self.directory:
            raise ValueError("--voices-dir must not be empty")
        if self.max_voices < 0:
            raise ValueError("--max-voices must be >= 0 (0 refuses new voices)")
        if self.max_bytes < 0:
            raise ValueError("--max-voice-bytes must be >= 0")

    @property
    def path(self) -> Path:
        return Path(self.directory).expanduser()
