"""scripts/gpu_check.sh --cpu-dry-run: the GPU check's phases on CPU (tiny preset, tiny sweeps), each in
its own process under its own limit, so the script that waits for a GPU machine keeps working; one
phase is made to hang, and its watchdog must end it at its limit while the run goes on."""

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The GPU machine's image (/work/.library/device/KINDS.md, nvidia-h200, read 2026-11-17), names only.
IMAGE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split())
THIS_CHECKOUT = {"csm-serve", "csm-wire", "csm-client"}
OPTIONAL = {"pysocks"}  # requests imports it when installed (SOCKS proxies); without it, nothing breaks


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carried() -> set[str]:
    """The distributions scripts/fetch_gpu_wheels.sh puts into .whl/."""
    text = (ROOT / "scripts" / "fetch_gpu_wheels.sh").read_text()
    names = re.search(r"^PACKAGES=\(([^)]*)\)", text, re.M).group(1).split()
    pins = re.search(r"^GPU_PINS=\(([^)]*)\)", text, re.M).group(1).split()
    return {normalize(n) for n in names} | {normalize(p.split("==")[0]) for p in pins}


def test_gpu_check_cpu_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable,
           "CSM_GPU_CHECK_HANG": "int8", "CSM_GPU_CHECK_LIMITS": "int8=5"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    phases = result["phases"]
    statuses = {n: p["status"] for n, p in phases.items()}
    assert statuses == {"pytest": "ok", "steps": "ok", "sweep-off": "ok", "sweep-on": "ok", "parity": "ok",
                        "precision": "ok", "int8": "timed out", "float8": "refused", "eager": "refused"}, \
        proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 1  # the hung phase is a failure of the run, reported, not a hang of it
    # 4 minutes on 2 cores: its CPU time (every process of it), which the other work on a shared
    # machine does not inflate as it does the wall time (243 s at a load average of 7 on 2 cores)
    assert cpu_s < 240, f"the dry run used {cpu_s:.0f} s of CPU (its budget: 4 minutes)"
    # the watchdog: every thread's traceback at the limit, the hanging frame in it, and the run went on
    hung = phases["int8"]
    assert hung["limit_s"] == 5 and 5 <= hung["seconds"] < 5 + 15  # the conductor kills at + 15 s
    assert "in hang" in hung["watchdog_tracebacks"] and "in hang" in proc.stdout
    assert "compute capability >= 8.9" in phases["float8"]["reason"]
    assert phases["pytest"]["result"]["skipped"] == 8  # CUDA-only tests, skipped on CPU
    steps = phases["steps"]["result"]
    assert [r["batch"] for r in steps["rows"]] == [1, 2] and all(r["ms"] > 0 and r["bytes"] > 0 for r in steps["rows"])
    assert phases["parity"]["result"]["requests_equal"] == 1  # CPU against CPU: identical
    off = phases["sweep-off"]["result"]["report"]["runs"]
    on = phases["sweep-on"]["result"]["report"]["runs"]
    assert [(r["concurrency"], r["watermark"]) for r in off + on] == [(1, False), (2, False), (2, True)]
    assert all(r["requests"] == r["concurrency"] and r["throughput_audio_s_per_s"] > 0 for r in off + on)
    # the summary: in its file, and the last thing printed
    summary = (tmp_path / "gpu_check.md").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip())
    assert "| int8 | timed out | " in summary and "| sweep-on | 2 | on |" in summary and "| 2 | " in summary
    assert {p.name for p in tmp_path.iterdir()} == {"gpu_check.json", "gpu_check.md", "gpu_check.log"}
    assert summary.rstrip() in (tmp_path / "gpu_check.log").read_text()
    # what the phases imported is in the GPU image or in the wheels carried there
    # (pytest's phase left out: pytest loads every plugin installed where it runs, trio's here)
    imported = {normalize(d) for n, p in phases.items() if n != "pytest" for d in p.get("imported", [])}
    assert "moshi" in imported and "silentcipher" in imported
    assert imported - IMAGE - carried() - THIS_CHECKOUT - OPTIONAL == set()


def test_the_carried_wheels_are_only_what_is_missing_there():
    assert carried() == {"moshi", "silentcipher", "librosa", "soundfile", "cffi", "pydub", "torchao"}
    assert not carried() & IMAGE
    assert "GPU_PINS=(torchao==0.17.0)" in (ROOT / "scripts" / "fetch_gpu_wheels.sh").read_text()  # torch 2.11's


# Installed here, but neither in the GPU image nor in .whl/: the HTTP API's and the output encoders'
# packages, which the engine, csm-bench and the check never need.
NOT_ON_THE_GPU_MACHINE = ("av", "starlette", "uvicorn")


def test_what_the_gpu_check_imports_is_on_the_gpu_machine():
    code = ("import sys, importlib.util\n"
            f"for name in {NOT_ON_THE_GPU_MACHINE!r}:\n"
            "    sys.modules[name] = None  # import raises ImportError, as where it is not installed\n"
            "def load(name):\n"
            "    spec = importlib.util.spec_from_file_location(name, f'scripts/{name}.py')\n"
            "    module = sys.modules[name] = importlib.util.module_from_spec(spec)\n"
            "    spec.loader.exec_module(module)\n"
            "load('gpu_check'); load('gpu_phases')\n"
            "assert 'torch' not in sys.modules, 'the conductor and the phase launcher import no torch'\n"
            "import server.engine.engine, csm_bench.cli, csm_bench.steps, tests.test_cuda  # what the phases run\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
