"""The Python client installs alone: `pip install ./protos ./client` into a fresh virtual
environment brings grpcio and protobuf but no torch, and its csm-say talks to a live server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("torch", "torchaudio", "transformers", "moshi", "silentcipher", "av", "starlette", "numpy")


def run(*command, **options) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, **options)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_client_installs_without_torch_and_csm_say_talks_to_a_live_server(server, tmp_path):
    venv = tmp_path / "client-venv"
    python = venv / "bin" / "python"
    # uv is what scripts/setup.sh installs with; `uv pip install` resolves like `pip install`.
    uv = Path(sys.executable).parent / "uv"
    run(uv, "venv", "-q", "--python", sys.executable, venv)
    # --offline: the dependencies come from uv's cache, which scripts/setup.sh filled (tests reach
    # no network). The repo's own packages are copied to a new path first: uv keys the builds of a
    # local directory by its path and pyproject.toml, so this checkout's code is built afresh.
    sources = tmp_path / "src"
    for package in ("protos", "client"):
        shutil.copytree(ROOT / package, sources / package,
                        ignore=shutil.ignore_patterns("go", "build", "*.egg-info", "__pycache__"))
    run(uv, "pip", "install", "-q", "--offline", "--python", python, sources / "protos", sources / "client")

    installed = {line.split("==")[0].lower() for line in run(uv, "pip", "freeze", "--python", python).stdout.split()}
    assert {"csm-client", "csm-wire", "grpcio", "protobuf"} <= installed
    assert not installed & set(SERVER_ONLY), installed & set(SERVER_ONLY)
    probe = ("import importlib.util as u; import csm_client, csm_wire; "
             "print([m for m in ('torch', 'client', 'server') if u.find_spec(m)])")
    assert run(python, "-c", probe, cwd=tmp_path).stdout.strip() == "[]"

    out = tmp_path / "hello.wav"
    said = run(venv / "bin" / "csm-say", "Hello from a fresh environment.", "-o", out, "--server", server.target,
               "--max-audio-ms", "400", "--seed", "5", cwd=tmp_path)
    with wave.open(str(out)) as w:
        assert w.getnframes() > 0 and w.getframerate() == 24_000
    assert "has random weights" in said.stderr and "first audio after" in said.stderr
