"""The 44-byte header of 16-bit mono PCM WAV, as csm.v1 streams it (shared by server and client).

While streaming, the length is unknown: the RIFF and data sizes say 0xFFFFFFFF, which common
readers (libsndfile, ffmpeg) take as "until the end of the file". Once the length is known,
`exact_header` gives the header to write instead.
"""

from __future__ import annotations

import struct

HEADER_BYTES = 44
UNKNOWN_SIZE = 0xFFFFFFFF


def header(sample_rate: int, data_bytes: int | None) -> bytes:
    """Header of 16-bit mono PCM; `data_bytes=None` writes the streaming (unknown) sizes."""
    data_size = UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff_size = UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", data_size)
    )


def exact_header(streamed_header: bytes, data_bytes: int) -> bytes:
    """The streamed header with its size fields set for `data_bytes` bytes of samples."""
    fixed = bytearray(streamed_header[:HEADER_BYTES])
    fixed[4:8] = struct.pack("<I", 36 + data_bytes)
    fixed[40:44] = struct.pack("<I", data_bytes)
    return bytes(fixed)


def finalize(streamed: bytes) -> bytes:
    """A whole streamed WAV (header + samples) with exact sizes."""
    return exact_header(streamed, len(streamed) - HEADER_BYTES) + streamed[HEADER_BYTES:]
