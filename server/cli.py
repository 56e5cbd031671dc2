"""csm-serve: the csm.v1 gRPC server. Every flag can also be set by the environment variable shown."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from csm_core.constants import CSM_PUBLIC_WATERMARK_KEY, QUANTIZE_MODES
from server.app import ServedEngine, ServerConfig, SpeechServer
from server.auth import load_tokens
from server.engine.config import EngineConfig

log = logging.getLogger("csm-serve")

def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _key(text: str) -> tuple[int, ...]:
    try:
        key = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 212,211,146,56,201, got {text!r}")
    if not key or any(not 0 <= k <= 255 for k in key):
        raise argparse.ArgumentTypeError(f"every key number must be in 0..255, got {text!r}")
    return key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csm-serve",
        description="Serve Sesame's CSM-1B over gRPC (csm.v1.Speech) with continuous batching.",
    )

    def flag(name: str, env: str, default, help: str, **kwargs) -> None:
        # A string default goes through `type`, so a bad environment value fails like a bad flag.
        value = os.environ.get(env, default)
        shown = "unset" if default is None else default
        parser.add_argument(name, default=value, help=f"{help} [env {env}; default {shown}]", **kwargs)

    flag("--model", "CSM_MODEL", "bench",
         "hub id, checkpoint directory or preset (csm-1b, bench, tiny); bench and tiny have random weights")
    flag("--device", "CSM_DEVICE", "auto", "auto, cpu, cuda or cuda:N")
    flag("--dtype", "CSM_DTYPE", "auto", "auto, float32, bfloat16 or float16")
    flag("--quantize", "CSM_QUANTIZE", "none",
         "backbone and depth decoder weights: none, int8-weight (torchao int8 weight-only) or float8 (torchao "
         "float8 weights and activations; CUDA compute capability >= 8.9, bfloat16)", choices=QUANTIZE_MODES)
    flag("--max-slots", "CSM_MAX_SLOTS", "8", "streams decoded together", type=int)
    flag("--max-queue", "CSM_MAX_QUEUE", "64", "requests that may wait for a slot; more get RESOURCE_EXHAUSTED",
         type=int)
    flag("--prefill-budget", "CSM_PREFILL_BUDGET", "128",
         "prompt positions prefilled per engine step while streams are decoding: higher admits new requests "
         "faster, lower keeps running streams' frame gaps steadier", type=int)
    flag("--idle-prefill-budget", "CSM_IDLE_PREFILL_BUDGET", "512",
         "prompt positions prefilled per engine step while no stream is decoding", type=int)
    flag("--torch-threads", "CSM_TORCH_THREADS", None,
         "CPU: intra-op threads of each pipeline thread (model, Mimi, output); unset: half the cores", type=int)
    flag("--output-workers", "CSM_OUTPUT_WORKERS", None,
         "output (watermark, resampling) threads; unset: with the watermark on a CPU, one per --torch-threads "
         "share of the cores, else 1", type=int)
    flag("--host", "CSM_HOST", "0.0.0.0", "address to listen on (gRPC and metrics)")
    flag("--port", "CSM_PORT", "50051", "gRPC port", type=int)
    flag("--metrics-port", "CSM_METRICS_PORT", "9090", "Prometheus /metrics port; 0 disables", type=int)
    flag("--watermark", "CSM_WATERMARK", "true", "watermark the output with silentcipher",
         type=_bool, action=argparse.BooleanOptionalAction)
    flag("--watermark-key", "CSM_WATERMARK_KEY", ",".join(map(str, CSM_PUBLIC_WATERMARK_KEY)),
         "watermark key, comma-separated bytes (the default is CSM-1B's public key: set your own)", type=_key)
    flag("--watermark-weights", "CSM_WATERMARK_WEIGHTS", None, "directory with silentcipher's checkpoints")
    flag("--mimi-weights", "CSM_MIMI_WEIGHTS", None, "Mimi checkpoint (.safetensors)")
    flag("--tokenizer", "CSM_TOKENIZER", None, "Llama-3 tokenizer (hub id or directory)")
    flag("--tls-cert", "CSM_TLS_CERT", None, "server certificate chain (PEM); with --tls-key turns TLS on")
    flag("--tls-key", "CSM_TLS_KEY", None, "server private key (PEM)")
    flag("--tls-client-ca", "CSM_TLS_CLIENT_CA", None, "CA bundle (PEM) that client certificates must chain to (mTLS)")
    flag("--auth-tokens-file", "CSM_AUTH_TOKENS_FILE", None,
         "file of accepted bearer tokens, one per line (env CSM_AUTH_TOKENS adds comma-separated ones)")
    flag("--max-message-bytes", "CSM_MAX_MESSAGE_BYTES", str(64 * 1024 * 1024),
         "largest gRPC message received or sent", type=int)
    flag("--drain-grace-s", "CSM_DRAIN_GRACE_S", "30", "on SIGTERM, seconds in-flight streams get to finish",
         type=float)
    flag("--log-format", "CSM_LOG_FORMAT", "text", "log format", choices=("text", "json"))
    return parser


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


async def serve(engine: ServedEngine, config: ServerConfig) -> None:
    """Serves until SIGTERM or SIGINT, then drains; a second signal stops at once."""
    server = SpeechServer(engine, config)
    try:
        await server.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        drain = asyncio.create_task(server.drain())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, drain.cancel)
        try:
            await drain
        except asyncio.CancelledError:
            log.warning("second signal during drain: stopping now")
            await server.stop(0)
    finally:
        engine.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    try:
        server_config = ServerConfig(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port or None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_tokens=load_tokens(args.auth_tokens_file, os.environ.get("CSM_AUTH_TOKENS")),
            max_message_bytes=args.max_message_bytes,
            drain_grace_s=args.drain_grace_s,
        )
        engine_config = EngineConfig(
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            quantize=args.quantize,
            max_slots=args.max_slots,
            max_queue=args.max_queue,
            prefill_budget=args.prefill_budget,
            idle_prefill_budget=args.idle_prefill_budget,
            torch_threads=args.torch_threads,
            output_workers=args.output_workers,
            watermark=args.watermark,
            watermark_key=args.watermark_key,
            watermark_weights=args.watermark_weights,
            mimi_weights=args.mimi_weights,
            tokenizer=args.tokenizer,
        )
    except ValueError as exc:
        parser.error(str(exc))
    from server.engine.engine import Engine  # torch loads only once the flags are known to be valid

    log.info("loading model %r on device %s (%s)", args.model, args.device, args.dtype)
    try:
        engine = Engine(engine_config)  # logs loudly when the weights are random (bench, tiny)
    except (ValueError, OSError) as exc:
        log.error("cannot load model %r: %s", args.model, exc)
        return 1
    if server_config.auth_tokens:
        log.info("bearer-token authentication on (%d tokens)", len(server_config.auth_tokens))
    else:
        log.warning("no auth tokens configured: any client that reaches the port may synthesize")
    engine.start()
    asyncio.run(serve(engine, server_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
