#!/usr/bin/env bash
# The one-shot check of the CUDA path on a GPU machine that reaches no network (<= 8 min on one
# H100/H200, model set-up included):
#   bash scripts/fetch_gpu_wheels.sh         # beforehand, where PyPI is reachable: .whl/ (carry it)
#   bash scripts/gpu_check.sh                # on the GPU machine: results into $OUT
#   bash scripts/gpu_check.sh --cpu-dry-run  # the same flow on CPU, tiny preset and sweep (tests run it)
# It installs .whl/ into /tmp/csm-site (--no-deps: the image has torch 2.11, triton, numpy, ...),
# runs pytest tests/test_cuda.py, then scripts/gpu_check.py: greedy parity CUDA fp32 vs CPU fp32
# (bench), bf16 vs fp32 (csm-1b random weights) and the csm-bench sweep (csm-1b bf16, 1..256
# streams, watermark off/on, graphs on/off, quantize none/int8-weight/float8), with what time is
# left. $OUT (default out/gpu-check) gets gpu_check.json, gpu_check.md (summary table) and logs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=470  # of the 8 minutes: the rest is the machine's Python start and the install
dry_run=0
case "${1:-}" in
  --cpu-dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-dry-run]" >&2; exit 2 ;;
esac
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
export NO_TORCH_COMPILE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
if [ "$dry_run" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  check_args=(--cpu-dry-run)
else
  PY=${PYTHON:-python3}
  check_args=()
  if [ ! -d .whl ]; then
    echo "error: .whl/ is missing: run scripts/fetch_gpu_wheels.sh where PyPI is reachable, and carry .whl" >&2
    exit 1
  fi
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/csm-site .whl/*.whl
  export PYTHONPATH=/tmp/csm-site:$PWD
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi

set +e
# At most 3 of the 8 minutes: a compile that hangs must leave the sweep its time.
timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.log"
pytest_rc=${PIPESTATUS[0]}
set -e
left=$((BUDGET_S - ($(date +%s) - start)))
"$PY" scripts/gpu_check.py --out "$OUT" --budget-s "$left" --pytest-rc "$pytest_rc" "${check_args[@]}" \
  2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
