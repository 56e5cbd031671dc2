"""What every command-line tool owes a newcomer: --version, errors that -q does not hide, a
--help that says which models are noise, a clear word when the gated real model cannot be
fetched, and no misleading ffmpeg warning in the server log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("", "protos", "client"))


def _parsers():
    from csm_bench.cli import build_parser as bench
    from csm_client.csm_converse import build_parser as converse
    from csm_client.csm_say import build_parser as say
    from csm_client.csm_voice import build_parser as voice
    from csm_client.loadtest_args import build_parser as loadtest
    from server.cli import build_parser as serve

    return {"csm-serve": serve, "csm-bench": bench, "csm-say": say, "csm-voice": voice, "csm-loadtest": loadtest,
            "csm-converse": converse}


@pytest.mark.parametrize("prog", ["csm-serve", "csm-bench", "csm-say", "csm-voice", "csm-loadtest", "csm-converse"])
def test_version_on_every_cli(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parsers()[prog]().parse_args(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(prog + " ") and len(out) > len(prog) + 1, out


def test_serve_help_names_the_random_weight_presets() -> None:
    from server.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "csm-1b, bench and tiny have RANDOM WEIGHTS" in text
    assert "sesame/csm-1b (gated" in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_quiet_still_prints_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from csm_client.csm_say import main

    code = main(["Hello.", "-q", "-o", str(tmp_path / "out.wav"), "--timeout", "10",
                 "--server", f"127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("csm-say: UNAVAILABLE"), err
    assert not (tmp_path / "out.wav").exists()


def test_real_model_offline_says_it_is_gated(tmp_path: Path) -> None:
    """csm-serve --model sesame/csm-1b with no hub: the licence, HF_TOKEN and --model DIR, not
    the hub's generic error."""
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "NO_TORCH_COMPILE": "1"}
    env.pop("HF_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "--model", "sesame/csm-1b", "--host", "127.0.0.1", "--port", "0",
         "--http-port", "0", "--metrics-port", "0", "--voices-dir", str(tmp_path / "voices")],
        env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log
    assert "sesame/csm-1b is a gated model" in log, log
    assert "https://huggingface.co/sesame/csm-1b" in log and "HF_TOKEN" in log and "--model /path/to/dir" in log
    assert "Cannot find an appropriate cached snapshot" not in log


def test_no_ffmpeg_warning_when_the_watermark_loads(tmp_path: Path) -> None:
    """pydub (through silentcipher) warns at import when ffmpeg is not on PATH; the server's log
    must not open with it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "PATH": str(bin_dir)}
    bare = subprocess.run([sys.executable, "-W", "default", "-c", "import pydub"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "Couldn't find ffmpeg" in bare.stderr, "the test's PATH still finds ffmpeg: " + bare.stderr
    done = subprocess.run([sys.executable, "-W", "default", "-c", "import csm_core.watermark"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ffmpeg" not in done.stderr, done.stderr
