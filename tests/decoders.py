"""Independent checks of encoded audio: the ffmpeg and opusinfo programs (Debian's builds, not the
PyAV that encodes it), run as separate processes. scripts/install_tools.sh installs them; where
they are missing the tests that need them skip, except under CI, where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

# The FFmpeg demuxer of each format, so that nothing depends on probing a pipe.
DEMUXERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav", "pcm": "s16le"}
OPUS_DECODE_RATE = 48_000  # libopus decodes at 48 kHz whatever rate was encoded
OPUS_FRAME_SAMPLES = 960  # one 20 ms Opus frame at OPUS_DECODE_RATE


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (scripts/install_tools.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def ffmpeg_decode(data: bytes, fmt: str, rate: int = 24_000) -> np.ndarray:
    """int16 mono samples decoded by the ffmpeg program, at the stream's own rate (Opus: libopus,
    at OPUS_DECODE_RATE), honouring pre-skip and end trimming; fails on any decoder complaint."""
    args = [require("ffmpeg"), "-nostdin", "-v", "error", "-f", DEMUXERS[fmt]]
    if fmt == "pcm":
        args += ["-ar", str(rate), "-ac", "1"]
    if fmt == "opus":
        args += ["-c:a", "libopus"]
    args += ["-i", "pipe:0", "-f", "s16le", "-ac", "1", "pipe:1"]
    done = subprocess.run(args, input=data, capture_output=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, f"ffmpeg could not decode the {fmt}: {done.stderr.decode()}"
    return np.frombuffer(done.stdout, "<i2")


def ffprobe_rate(data: bytes, fmt: str) -> int:
    done = subprocess.run([require("ffprobe"), "-v", "error", "-f", DEMUXERS[fmt], "-i", "pipe:0",
                           "-show_entries", "stream=sample_rate", "-of", "csv=p=0"],
                          input=data, capture_output=True, timeout=60, check=True)
    return int(done.stdout.decode().split()[0])


def opusinfo(data: bytes) -> str:
    """opusinfo's report of an Ogg/Opus file; fails when it reports a warning or an error."""
    tool = require("opusinfo")
    with tempfile.NamedTemporaryFile(suffix=".opus") as f:
        f.write(data)
        f.flush()
        done = subprocess.run([tool, f.name], capture_output=True, text=True, timeout=60)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "WARNING" not in report.upper() and "ERROR" not in report.upper(), report
    return report


def opus_pre_skip(report: str) -> int:
    return int(report.split("Pre-skip:")[1].split()[0])
