# syntax=docker/dockerfile:1
# csm-serve: gRPC server for Sesame's CSM-1B. One container drives one GPU.
#
#   docker build -t csm-serve:0.1.0 .
#   docker run --gpus all -p 50051:50051 -p 8000:8000 -p 9090:9090 -v csm-cache:/cache csm-serve:0.1.0 \
#     --model sesame/csm-1b --dtype bfloat16        (with -e HF_TOKEN for the gated weights)
#
# Base image: Python 3.11 slim (Debian bookworm), not an nvidia/cuda image. The torch 2.9.1
# wheels on PyPI carry their own CUDA 12.8 user-space libraries (cudart, cuBLAS, cuDNN,
# NCCL as nvidia-* wheels) and the NVIDIA container runtime mounts the driver (libcuda)
# from the node, so a CUDA runtime base would add a second, unused copy of those libraries
# (gigabytes) and a system Python other than the 3.11 the stack is tested on. What such a
# base adds that matters is its NVIDIA_* environment, set below: it asks the runtime for
# the compute driver libraries and makes it refuse, at start, a driver too old for CUDA 12.8.
FROM python:3.11-slim-bookworm

ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=12.8" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1

RUN pip install "uv==0.13.*"

WORKDIR /src
# Dependencies first (the torch layer is large and rarely changes), then the code.
# protos/ is the csm-wire package (the wire contract) that csm-serve depends on: small and
# rarely changed, so it comes in with the dependency layer.
COPY pyproject.toml ./
COPY protos/ protos/
RUN uv pip install --system ./protos -r pyproject.toml \
 && uv pip install --system --no-deps "silentcipher==1.0.5"
COPY README.md ./
COPY csm_core/ csm_core/
COPY csm_bench/ csm_bench/
COPY server/ server/
COPY client/pyproject.toml client/
COPY client/csm_client/ client/csm_client/
RUN uv pip install --system --no-deps . ./client \
 && command -v csm-serve \
 && rm -rf /src

# Non-root user with fixed ids (the Helm chart runs as 10001:10001 with runAsNonRoot).
# The root filesystem may be read-only: everything written at run time goes to /cache
# (weights, compiler caches) or /tmp.
RUN groupadd --gid 10001 csm \
 && useradd --uid 10001 --gid 10001 --home-dir /home/csm --create-home --shell /usr/sbin/nologin csm \
 && mkdir -p /cache \
 && chown 10001:10001 /cache
ENV HOME=/home/csm \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    TRITON_CACHE_DIR=/cache/triton \
    NUMBA_CACHE_DIR=/tmp/numba
VOLUME ["/cache"]

USER 10001:10001
WORKDIR /home/csm
# gRPC (with grpc.health.v1 and reflection) and Prometheus /metrics.
EXPOSE 50051 8000 9090
ENTRYPOINT ["csm-serve"]
CMD []
