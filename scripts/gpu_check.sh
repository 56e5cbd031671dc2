#!/usr/bin/env bash
# The one-shot check of the CUDA path on a GPU machine that reaches no network; the whole run ends
# within 8 minutes (BUDGET_S) on one H100/H200, whatever hangs:
#   bash scripts/fetch_gpu_wheels.sh         # beforehand, where PyPI is reachable: .whl/ (carry it)
#   bash scripts/gpu_check.sh                # on the GPU machine: results into $OUT
#   bash scripts/gpu_check.sh --cpu-dry-run  # the same phases on CPU, tiny preset (tests run it)
# It installs .whl/ into /tmp/csm-site (--no-deps: the image has torch 2.11, triton, numpy, scipy,
# ...), then scripts/gpu_check.py runs each phase of scripts/gpu_phases.py in its own process under
# its own time limit and watchdog: pytest tests/test_cuda.py, steps (the decode step per batch bucket
# against the roofline), the engine sweeps (watermark off, on), parity, precision, int8, float8,
# graphs off, as long as the budget lasts. $OUT (default out/gpu-check) gets gpu_check.md (the
# summary table, also printed last), gpu_check.json, gpu_check.log (everything printed) and, on a
# GPU, nvidia-smi.txt: 4 files.
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
case "${1:-}" in
  --cpu-dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-dry-run]" >&2; exit 2 ;;
esac
# seconds from here to the summary: on a GPU 8 minutes less the Python start; the dry run on a
# shared CPU machine gets more (its test bounds its CPU time instead)
BUDGET_S=${BUDGET_S:-$([ "$dry_run" = 1 ] && echo 1200 || echo 470)}
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
export NO_TORCH_COMPILE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1  # NO_TORCH_COMPILE: moshi's own compiles
start=$(date +%s)
exec > >(tee "$OUT/gpu_check.log") 2>&1
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
  export PYTHONPATH=/tmp/csm-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  export CSM_GPU_CHECK_CACHE=${CSM_GPU_CHECK_CACHE:-/tmp/csm-compile-cache}  # shared by every phase
  timeout 20 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi
left=$((BUDGET_S - ($(date +%s) - start)))
exec "$PY" scripts/gpu_check.py --out "$OUT" --budget-s "$left" "${check_args[@]}"  # its summary: printed last
