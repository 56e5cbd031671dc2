#!/usr/bin/env bash
# Fetches into .whl/ (ignored) the Python packages that the GPU image lacks, for
# scripts/gpu_check.sh on a GPU machine without network. The image has Python 3.12, torch 2.11
# (CUDA 13), triton, numpy, scipy, safetensors, tokenizers, einops, sentencepiece, PyYAML,
# prometheus-client, pytest: these are fetched as cp312 manylinux wheels at the versions this
# checkout's .venv runs (scripts/setup.sh first), and installed there with --no-deps:
#   moshi, sphn (Mimi); silentcipher and what it imports (librosa, soundfile + cffi, pydub);
#   torchao (--quantize); grpcio, its health/reflection/status packages, protobuf and
#   googleapis-common-protos (csm_wire's generated code needs protobuf >= 7.35.1); csm-wire (protos/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MAX_MIB=60
PACKAGES=(moshi sphn silentcipher librosa soundfile cffi pydub torchao grpcio grpcio-health-checking
          grpcio-reflection grpcio-status protobuf googleapis-common-protos)

pins=()
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
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w .whl ./protos
rm -rf protos/build  # setuptools' build folder, left in the source tree
mib=$(du -sm .whl | cut -f1)
ls -1 .whl
echo "${#pins[@]} wheels + csm-wire in .whl/: ${mib} MiB"
if [ "$mib" -gt "$MAX_MIB" ]; then
  echo "error: .whl/ is over ${MAX_MIB} MiB" >&2
  exit 1
fi
