"""The voices directory: one safetensors file per voice, written atomically, shared by replicas.

    <dir>/<name>.safetensors     codes int16 [32, frames] per segment ("segments.<i>.codes"),
                                 everything else as JSON in the header's metadata
    <dir>/.<name>.<random>.tmp   a write in progress (never read; removed once stale)

A voice is written to a temporary file, flushed to disk, then published under its name with
`os.link`, which fails when the name exists: the same create-if-absent on every replica
mounting the directory. A crash leaves at most a temporary file, never a half voice. Reads
go by name, so a voice created by another replica is found without a restart; each file is
parsed once per replica and cached by (inode, size, mtime), so a voice deleted or created
again elsewhere is seen at the next read. Torch-free.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from server.voices.types import (
    Voice, VoiceExists, VoiceNotFound, VoiceSegment, VoiceUnusable, VoiceUsage, content_hash, valid_name,
)

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
TEMP_SUFFIX = ".tmp"
FORMAT = "csm-voice"
FORMAT_VERSION = "1"
STALE_TEMP_S = 3600.0  # a temporary file this old belongs to a write that crashed
_HEADER_SIZE = struct.Struct("<Q")  # safetensors: little-endian u64 header length, then JSON


@dataclass(slots=True, frozen=True)
class _FileKey:
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _FileKey:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


def to_bytes(voice: Voice) -> bytes:
    """The file content of a voice."""
    tensors = {f"segments.{i}.codes": np.ascontiguousarray(s.codes, dtype=np.int16)
               for i, s in enumerate(voice.segments)}
    manifest = {
        "name": voice.name,
        "description": voice.description,
        "created_at": voice.created_at,
        "codec": voice.codec,
        "content_hash": voice.content_hash,
        "segments": [{"speaker": s.speaker, "text": s.text, "prompt_frames": s.prompt_frames}
                     for s in voice.segments],
    }
    metadata = {"format": FORMAT, "version": FORMAT_VERSION, "voice": json.dumps(manifest, ensure_ascii=False)}
    return save_tensors(tensors, metadata=metadata)


def from_bytes(data: bytes, size_bytes: int) -> Voice:
    """Parses a voice file; ValueError when it is not a complete voice of this format."""
    (header_len,) = _HEADER_SIZE.unpack_from(data)
    header = json.loads(data[_HEADER_SIZE.size:_HEADER_SIZE.size + header_len])
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT or metadata.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} file (format {metadata.get('format')!r}, "
                         f"version {metadata.get('version')!r})")
    manifest = json.loads(metadata["voice"])
    tensors = load_tensors(data)
    segments = []
    for i, seg in enumerate(manifest["segments"]):
        codes = tensors[f"segments.{i}.codes"]
        if codes.dtype != np.int16:
            raise ValueError(f"segment {i}: codes are {codes.dtype}, expected int16")
        codes.flags.writeable = False
        segments.append(VoiceSegment(_integer(seg["speaker"]), seg["text"], codes, _integer(seg["prompt_frames"])))
    voice = Voice(name=manifest["name"], description=manifest["description"], segments=tuple(segments),
                  content_hash=manifest["content_hash"], codec=manifest["codec"],
                  created_at=_number(manifest["created_at"]), size_bytes=size_bytes)
    actual = content_hash((s.speaker, s.text, s.codes) for s in voice.segments)
    if actual != voice.content_hash:
        raise ValueError(f"content hash {actual} does not match the recorded {voice.content_hash}")
    return voice


def _integer(value: object) -> int:
    """A JSON integer as it was written; int() would also take "٣" or 3.7."""
    if type(value) is not int:
        raise ValueError(f"{value!r} is not an integer")
    return value


def _number(value: object) -> float:
    if type(value) not in (int, float):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


class VoiceStore:
    """Files of the voices directory. Thread-safe; several processes may share the directory."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[_FileKey, Voice]] = {}

    def path(self, name: str) -> Path:
        if not valid_name(name):  # also keeps every path inside the directory
            raise VoiceNotFound(f"there is no voice {name!r}")
        return self.directory / f"{name}{SUFFIX}"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def read(self, name: str) -> Voice:
        """VoiceNotFound when there is no such file; VoiceUnusable when it cannot be parsed."""
        path = self.path(name)
        try:
            with open(path, "rb") as f:
                key = _FileKey.of(os.fstat(f.fileno()))
                with self._lock:
                    cached = self._cache.get(name)
                if cached is not None and cached[0] == key:
                    return cached[1]
                data = f.read()
        except FileNotFoundError:
            with self._lock:
                self._cache.pop(name, None)
            raise VoiceNotFound(f"there is no voice {name!r}") from None
        try:
            voice = from_bytes(data, key.size)
        except (ValueError, KeyError, TypeError, struct.error, SafetensorError) as exc:
            raise VoiceUnusable(f"voice {name!r} is stored but unreadable ({exc}): delete it and create it again") from exc
        if voice.name != name:
            raise VoiceUnusable(f"the file of voice {name!r} holds voice {voice.name!r}: delete it and create it again")
        with self._lock:
            self._cache[name] = (key, voice)
        return voice

    def names(self) -> list[str]:
        """Names of the stored voices, sorted; removes temporary files of crashed writes."""
        names = []
        now = time.time()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(SUFFIX) and valid_name(entry.name[: -len(SUFFIX)]) and entry.is_file():
                    names.append(entry.name[: -len(SUFFIX)])
                elif entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    self._remove_if_stale(entry, now)
        return sorted(names)

    def read_many(self, names: list[str]) -> list[Voice]:
        """The readable voices among `names`, in order; unreadable files are logged and skipped."""
        voices = []
        for name in names:
            try:
                voices.append(self.read(name))
            except VoiceNotFound:  # deleted meanwhile
                continue
            except VoiceUnusable as exc:
                log.warning("%s", exc)
        return voices

    def usage(self) -> VoiceUsage:
        """Voice files and their bytes (every file counts, readable or not)."""
        count = total = 0
        for name in self.names():
            try:
                total += self.path(name).stat().st_size
                count += 1
            except FileNotFoundError:
                continue
        return VoiceUsage(voices=count, bytes=total)

    def create(self, voice: Voice, data: bytes) -> Voice:
        """Publishes `data` (to_bytes(voice)) under the voice's name; VoiceExists if it is taken."""
        final = self.path(voice.name)
        tmp = self.directory / f".{voice.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._publish(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_directory()
        return replace(voice, size_bytes=len(data))

    def delete(self, name: str) -> bool:
        """False when there was no such voice. Callers holding the Voice keep its codes."""
        if not valid_name(name):
            return False
        path = self.path(name)
        with self._lock:
            self._cache.pop(name, None)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._sync_directory()
        return True

    def _publish(self, tmp: Path, final: Path) -> None:
        try:
            os.link(tmp, final)  # atomic create-if-absent, also between replicas
        except FileExistsError:
            raise VoiceExists(f"voice {final.name[: -len(SUFFIX)]!r} exists already") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                raise
            # No hard links on this filesystem: rename is still atomic, but two replicas that
            # create the same name at the same instant may both succeed (the last one stays).
            if final.exists():
                raise VoiceExists(f"voice {final.name[: -len(SUFFIX)]!r} exists already") from None
            os.replace(tmp, final)

    def _sync_directory(self) -> None:
        """Makes the directory entry (a new name, a removed one) durable."""
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:  # some filesystems do not sync directories; the data itself is synced
            pass
        finally:
            os.close(fd)

    @staticmethod
    def _remove_if_stale(entry: os.DirEntry, now: float) -> None:
        try:
            if now - entry.stat().st_mtime > STALE_TEMP_S:
                os.unlink(entry.path)
                log.info("removed %s, left by a voice write that did not finish", entry.name)
        except FileNotFoundError:
            pass
