"""The shell commands that README.md and docs/ show a newcomer, run as written against a real
loopback server (tiny engine): curl on the HTTP API, grpcurl, ghz, csm-say and csm-voice. Only the
address changes (localhost:50051 and :8000 become the test server's ports); the recordings they
name (take.wav, question.wav, ...) are made in the working folder first. Each must exit 0, in
order (a voice is created before it is used), within COMMAND_TIMEOUT_S; their times are printed.

Left out, and why: commands for another host (TLS examples at speech.example.com), `--play` and
ffplay (no sound device), the Go csm-say (tests/e2e/test_go_csm_say.py runs it) and lines that
are not commands (`...` placeholders)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from .harness import LoopbackServer
from .test_grpc_tools import tool
from .test_voices import mimi_encoder, registry_for  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/api.md")
PROGRAMS = ("curl", "grpcurl", "ghz", "csm-say", ".venv/bin/csm-say", "csm-voice", ".venv/bin/csm-voice")
RECORDINGS = ("take.wav", "take1.wav", "take2.wav", "question.wav")
COMMAND_TIMEOUT_S = 120


def shell_commands(markdown: str) -> list[str]:
    """Logical commands of the ```sh / ```bash blocks: continuation lines joined, a heredoc kept
    with its command, trailing comments dropped."""
    out: list[str] = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", markdown, flags=re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = re.sub(r"\s{2,}#.*$", "", lines[i]).rstrip()
            i += 1
            if not line or line.lstrip().startswith("#"):
                continue
            while line.endswith("\\") and i < len(lines):
                line = line[:-1].rstrip() + " " + re.sub(r"\s{2,}#.*$", "", lines[i]).strip()
                i += 1
            heredoc = re.search(r"<<(\w+)\s*$", line)
            if heredoc:
                body = []
                while i < len(lines) and lines[i].strip() != heredoc.group(1):
                    body.append(lines[i])
                    i += 1
                i += 1
                line = "\n".join([line, *body, heredoc.group(1)])
            out.append(line)
    return out


def runnable(command: str) -> bool:
    first = command.split()[0]
    if first not in PROGRAMS:
        return False
    if "example.com" in command or "ffplay" in command or "--play" in command or " ..." in command:
        return False
    return not re.search(r"(^|\s)-server\s", command)  # the Go csm-say's flag


def doc_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for command in shell_commands((ROOT / doc).read_text()):
            if runnable(command):
                found.append((doc, command))
    return found


def test_the_docs_have_commands_to_run():
    commands = doc_commands()
    programs = {command.split()[0].removeprefix(".venv/bin/") for _, command in commands}
    assert {"curl", "grpcurl", "csm-say", "csm-voice"} <= programs, commands
    assert len(commands) >= 20, commands


@pytest.fixture()
def server(engine, mimi_encoder, tmp_path):  # noqa: F811
    """The docs' server: csm.v1.Speech, csm.v1.Voices and the HTTP API, voices in tmp_path."""
    registry, _ = registry_for(engine, mimi_encoder, tmp_path / "voices")
    server = LoopbackServer(engine, voices=registry).start()
    yield server
    server.stop()


def test_every_doc_command_runs_as_written(server, tmp_path):
    grpcurl = tool("grpcurl")
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    rng = np.random.default_rng(0)
    for name in RECORDINGS:
        soundfile.write(tmp_path / name, 0.1 * rng.standard_normal(24_000), 24_000, subtype="PCM_16")
    env = {**os.environ, "CSM_SERVER": server.target,
           "PATH": os.pathsep.join([str(Path(grpcurl).parent), str(ROOT / ".venv" / "bin"), os.environ["PATH"]]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos"), str(ROOT / "client")])}
    env.pop("CSM_TOKEN", None)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # `.venv/bin/csm-say` as the README writes it
    times = []
    for doc, command in doc_commands():
        line = (command.replace("http://localhost:8000", server.http_url)
                .replace("localhost:50051", server.target))
        curl = line.startswith("curl ")
        if curl:  # curl exits 0 on an HTTP error: have it print the status last, to check it
            line += " -w '\\n%{http_code}\\n'"
        t0 = time.monotonic()
        done = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT_S)
        times.append((time.monotonic() - t0, doc, command.splitlines()[0][:90]))
        assert done.returncode == 0, f"{doc}: {command}\nexited {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if curl:
            status = done.stdout.rstrip().rsplit("\n", 1)[-1]
            assert status.startswith("2"), f"{doc}: {command}\nHTTP {status}: {done.stdout[-1000:]}"
    for name in ("hello.wav", "narrator.wav"):  # what the docs say they write, read back
        info = soundfile.info(str(tmp_path / name))
        assert info.samplerate == 24_000 and info.frames > 0, (name, info)
    print("\n" + "\n".join(f"{s:6.2f} s  {doc}: {first}" for s, doc, first in times))
    print(f"{len(times)} commands from the docs, {sum(s for s, _, _ in times):.1f} s in all, the longest "
          f"{max(s for s, _, _ in times):.1f} s")
