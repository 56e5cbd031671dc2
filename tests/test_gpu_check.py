"""scripts/gpu_check.sh --cpu-dry-run: the GPU check's whole flow on CPU (tiny preset, tiny sweep),
so the script that waits for a GPU machine keeps working."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    phases = result["phases"]
    assert {n: p["status"] for n, p in phases.items()} == {
        "parity": "ok", "precision": "ok", "sweep-graphs": "ok", "sweep-int8": "ok",
        "sweep-float8": "refused", "sweep-eager": "ok"}
    assert "compute capability >= 8.9" in phases["sweep-float8"]["reason"]
    assert result["pytest_rc"] == 0
    parity = phases["parity"]["result"]
    assert parity["requests_equal"] == len(parity["requests"]) == 2  # CPU against CPU: identical
    runs = phases["sweep-graphs"]["result"]["report"]["runs"]
    assert [(r["concurrency"], r["watermark"]) for r in runs] == [(1, False), (2, False), (1, True), (2, True)]
    assert all(r["requests"] == r["concurrency"] and r["throughput_audio_s_per_s"] > 0 for r in runs)
    assert phases["sweep-int8"]["result"]["report"]["engine"]["quantize"] == "int8-weight"
    summary = (tmp_path / "gpu_check.md").read_text()
    assert "| graphs | 2 | on |" in summary and "| int8 | 2 | off |" in summary
    assert {p.name for p in tmp_path.iterdir()} == {"gpu_check.json", "gpu_check.md", "gpu_check.log",
                                                    "pytest_cuda.log"}



# Installed here, but neither in the GPU image nor in .whl/ (scripts/fetch_gpu_wheels.sh): the
# HTTP API's and the output encoders' packages, which the engine, csm-bench and the check never need.
NOT_ON_THE_GPU_MACHINE = ("av", "starlette", "uvicorn")


def test_what_the_gpu_check_imports_is_on_the_gpu_machine():
    code = ("import sys\n"
            f"for name in {NOT_ON_THE_GPU_MACHINE!r}:\n"
            "    sys.modules[name] = None  # import raises ImportError, as where it is not installed\n"
            "import server.engine.engine, csm_bench.cli, tests.test_cuda  # what gpu_check.sh runs\n"
            "import importlib.util\n"
            "spec = importlib.util.spec_from_file_location('gpu_check', 'scripts/gpu_check.py')\n"
            "module = sys.modules['gpu_check'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
