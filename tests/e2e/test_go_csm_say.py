"""The Go csm-say, built from the checkout as the README says (`go build ./cmd/csm-say` in
client/go), against the live loopback server: flags written after the text are honoured, an
unknown one is an error, and -version answers. Skipped where no Go toolchain is installed
(failed under CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

GO_MODULE = Path(__file__).resolve().parents[2] / "client" / "go"


@pytest.fixture(scope="module")
def csm_say(tmp_path_factory) -> Path:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no go toolchain on PATH (scripts/install_tools.sh needs one too)")
        pytest.skip("no go toolchain on PATH")
    binary = tmp_path_factory.mktemp("go") / "csm-say"
    done = subprocess.run([go, "build", "-o", str(binary), "./cmd/csm-say"], cwd=GO_MODULE,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "GOFLAGS": "-mod=mod"})
    assert done.returncode == 0, done.stderr
    return binary


def test_flags_after_the_text_are_honoured(csm_say, server, tmp_path):
    out = tmp_path / "hello.wav"
    done = subprocess.run([str(csm_say), "-server", server.target, "Hello", "from", "CSM.", "-o", str(out),
                           "-max-audio-ms", "400", "-sample-rate", "16000"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out.wav").exists(), "-o after the text was ignored"
    with wave.open(str(out)) as w:
        assert w.getframerate() == 16_000
        assert 0 < w.getnframes() <= 16_000 * 400 // 1000, "-max-audio-ms after the text was ignored"


def test_unknown_flag_after_the_text_is_an_error(csm_say, server, tmp_path):
    done = subprocess.run([str(csm_say), "-server", server.target, "Hello.", "--output", "x.wav"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "flag provided but not defined: -output" in done.stderr
    assert not list(tmp_path.glob("*.wav"))


def test_version(csm_say):
    done = subprocess.run([str(csm_say), "-version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("csm-say (Go) "), done
