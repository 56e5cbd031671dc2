"""scripts/serve.sh installs only when something changed (a hash of the pyproject.toml files and
setup.sh), run in a scratch copy of the repository layout with a stand-in setup.sh that
counts its runs and a stand-in csm-serve."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_SETUP = """#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
echo run >>setup-runs
mkdir -p .venv/bin
printf '#!/bin/sh\\necho "csm-serve $*"\\n' >.venv/bin/csm-serve
chmod +x .venv/bin/csm-serve
"""


def test_serve_skips_the_install_when_nothing_changed(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "serve.sh", tmp_path / "scripts" / "serve.sh")
    (tmp_path / "scripts" / "setup.sh").write_text(FAKE_SETUP)
    for p in ("pyproject.toml", "client/pyproject.toml", "protos/pyproject.toml"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / p, tmp_path / p)

    def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
        done = subprocess.run(["bash", str(tmp_path / "scripts" / "serve.sh"), *args], capture_output=True,
                              text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})
        assert done.returncode == 0, done.stderr
        return done

    def runs() -> int:
        return len((tmp_path / "setup-runs").read_text().split())

    assert serve("--port", "1").stdout.strip() == "csm-serve --port 1"
    assert runs() == 1
    again = serve("--version")
    assert runs() == 1 and "skipping the install" in again.stderr and again.stdout.strip() == "csm-serve --version"
    with (tmp_path / "client" / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    serve()
    assert runs() == 2
    serve()
    assert runs() == 2
    serve(CSM_SETUP="always")
    assert runs() == 3
    (tmp_path / ".venv" / "bin" / "csm-serve").unlink()
    serve()
    assert runs() == 4
