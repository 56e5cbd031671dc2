"""Every script in examples/ (Python SDK, OpenAI SDK, Go, grpcurl) and the csm-converse CLI, run
as a user runs them, in a subprocess against a real loopback server (tiny engine), each in
seconds (short max_audio_ms); the files they write are read back with soundfile and ffmpeg.
Go and grpcurl come from scripts/install_tools.sh: without them those tests skip and say why
(under CI, grpcurl's absence fails, as in test_grpc_tools.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from .test_grpc_tools import tool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RATE = 24_000


def run(command: list[str], server, *, cwd: Path = ROOT, stdin: str | None = None, timeout: float = 120,
        path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CSM_SERVER": server.target, "CSM_HTTP_URL": server.http_url,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos"), str(ROOT / "client"),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("CSM_TOKEN", None)
    if path:
        env["PATH"] = path + os.pathsep + env["PATH"]
    done = subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def wav_frames(path: Path, most_ms: int) -> int:
    """Frames of a 24 kHz mono WAV, checked by soundfile (header sizes exact) and ffmpeg."""
    info = soundfile.info(str(path))
    assert info.samplerate == RATE and info.channels == 1
    assert 0 < info.frames <= (most_ms + 80) * RATE // 1000, (path, info.frames)
    assert info.frames * 2 + 44 == path.stat().st_size  # the header's sizes are the real ones
    assert ffmpeg_samples(path) == info.frames
    return info.frames


def ffmpeg_samples(path: Path) -> int:
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-"],
                         capture_output=True, check=True, timeout=60).stdout
    return len(pcm) // 2


def test_python_synthesize(server, tmp_path):
    out = tmp_path / "hello.wav"
    done = run([sys.executable, str(EXAMPLES / "python" / "synthesize.py"), "Hello from CSM.", str(out)], server)
    assert str(out) in done.stdout
    wav_frames(out, 2000)


def test_python_converse(server, tmp_path):
    done = run([sys.executable, str(EXAMPLES / "python" / "converse.py"), str(tmp_path)], server)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turn-2.wav", "turn-3.wav"], done.stdout + done.stderr
    wav_frames(tmp_path / "turn-2.wav", 1000)
    wav_frames(tmp_path / "turn-3.wav", 2000)  # two sentences of up to 1000 ms each


def test_openai_sdk(server, tmp_path):
    pytest.importorskip("openai", reason="the openai package (pip install -e '.[dev]')")
    out = tmp_path / "hello.mp3"
    done = run([sys.executable, str(EXAMPLES / "openai" / "speech.py"), str(out)], server)
    assert "request " in done.stdout
    assert 0 < ffmpeg_samples(out) <= 2100 * RATE // 1000 + 2 * 1152  # mp3 pads up to a frame at each end


def test_grpcurl_script(server, tmp_path):
    grpcurl = tool("grpcurl")
    done = run(["bash", str(EXAMPLES / "grpcurl" / "synthesize.sh"), str(tmp_path)], server,
               path=str(Path(grpcurl).parent))
    assert done.stdout.split() == [f"{tmp_path}/hello.wav", f"{tmp_path}/reply-1.wav"]
    info = soundfile.info(str(tmp_path / "hello.wav"))
    assert info.samplerate == RATE and 0 < ffmpeg_samples(tmp_path / "hello.wav") <= 1080 * RATE // 1000
    wav_frames(tmp_path / "reply-1.wav", 800)


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if go is None:
        pytest.skip("the go toolchain is not installed (scripts/install_tools.sh installs it)")
    return go


def test_go_program(server, tmp_path):
    go = _go()
    done = run([go, "run", ".", "-server", server.target, "-out", str(tmp_path), "-max-audio-ms", "800"], server,
               cwd=EXAMPLES / "go", timeout=600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turn-2.wav", "turn-3.wav"], done.stdout + done.stderr
    wav_frames(tmp_path / "turn-2.wav", 800)
    wav_frames(tmp_path / "turn-3.wav", 1600)


def test_csm_converse_lines_to_one_file_and_per_turn(server, tmp_path):
    lines = "> Where is the station?\nTurn left at the second light.\n\nIt is on your right.\n"
    command = [sys.executable, "-m", "csm_client.csm_converse", "--server", server.target, "--seed", "3",
               "--max-audio-ms", "480", "-o", str(tmp_path / "all.wav"), "--per-turn", str(tmp_path / "turns")]
    done = run(command, server, stdin=lines)
    assert "turn-2:" in done.stderr and "turn-3:" in done.stderr and "2 turns" in done.stderr
    per_turn = [wav_frames(tmp_path / "turns" / f"turn-{n}.wav", 480) for n in (2, 3)]
    assert wav_frames(tmp_path / "all.wav", 960) == sum(per_turn)


def test_csm_converse_streams_a_file_as_one_turn(server, tmp_path):
    text = tmp_path / "reply.txt"
    text.write_text("First we finish the draft.\nThen we ship it.\n")
    command = [sys.executable, "-m", "csm_client.csm_converse", str(text), "--stream", "--format", "pcm",
               "--server", server.target, "--max-audio-ms", "480", "-q", "-o", str(tmp_path / "reply.pcm")]
    done = run(command, server)
    assert done.stderr == ""  # -q: no progress
    size = (tmp_path / "reply.pcm").stat().st_size
    assert 0 < size <= 2 * 560 * RATE // 1000 * 2  # two sentences, raw s16le


def test_csm_converse_reports_a_failed_turn(server, tmp_path):
    command = [sys.executable, "-m", "csm_client.csm_converse", "--server", server.target, "--speaker", "999",
               "--max-audio-ms", "240", "-o", str(tmp_path / "out.wav")]
    env_run = subprocess.run(command, input="Hello.\n", capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos"),
                                                                               str(ROOT / "client")])})
    assert env_run.returncode == 1 and "csm-converse:" in env_run.stderr and "speaker" in env_run.stderr


def test_the_readmes_csm_converse_line(server, tmp_path):
    """The first command of README.md's Converse section, as written (csm-converse run from this
    checkout; CSM_SERVER points it at the loopback server)."""
    block = (ROOT / "README.md").read_text().split("## Converse", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    command = block.split("\nmy-llm", 1)[0]
    assert command.startswith("printf") and "csm-converse" in command
    script = f'csm-converse() {{ "{sys.executable}" -m csm_client.csm_converse "$@"; }}\n{command}\n'
    done = run(["bash", "-c", script], server, cwd=tmp_path)
    assert "2 turns" in done.stderr
    per_turn = [wav_frames(tmp_path / "replies" / f"turn-{n}.wav", 3000) for n in (2, 3)]
    assert wav_frames(tmp_path / "replies.wav", 6000) == sum(per_turn)
