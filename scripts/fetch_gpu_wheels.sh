#!/usr/bin/env bash
# Fetches into .whl/ (ignored) the Python packages that scripts/gpu_check.sh imports on a GPU
# machine without network and that its image lacks. The image (one H200: Python 3.12, torch 2.11
# for CUDA 13, triton, numpy, scipy, safetensors, tokenizers, sentencepiece, einops, PyYAML,
# huggingface-hub, lazy-loader, ...) has the rest; tests/test_gpu_check.py checks that every
# distribution the check's phases import is in one or the other. Fetched as cp312 manylinux wheels,
# installed there with --no-deps:
#   moshi (Mimi); silentcipher and what it imports (librosa, soundfile + cffi, pydub), at the
#   versions this checkout's .venv runs (scripts/setup.sh first);
#   torchao at the version that matches the image's torch (torch 2.11 <-> torchao 0.17.0 in
#   torchao's compatibility table), not the 0.14.1 the project pins with torch 2.9 for CPU.
# Not carried, as the check never imports them: sphn, grpcio and its companions, protobuf, csm-wire.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MAX_MIB=12
PACKAGES=(moshi silentcipher librosa soundfile cffi pydub)  # at the .venv's versions
GPU_PINS=(torchao==0.17.0)  # for the image's torch 2.11

pins=("${GPU_PINS[@]}")
for name in "${PACKAGES[@]}"; do
  pins+=("$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl
mkdir -p .whl
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .whl \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  "${pins[@]}"
kib=$(du -sk .whl | cut -f1)
ls -1 .whl
echo "${#pins[@]} wheels in .whl/: $((kib / 1024)).$(( (kib % 1024) * 10 / 1024 )) MiB"
if [ "$kib" -gt $((MAX_MIB * 1024)) ]; then
  echo "error: .whl/ is over ${MAX_MIB} MiB" >&2
  exit 1
fi
