"""csm-serve: the csm.v1 gRPC server and its OpenAI-compatible HTTP API. Every flag can also be set
by the environment variable shown."""

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
from server.app import METRICS_AUTH, ServedEngine, ServerConfig, SpeechServer
from server.auth import BearerTokens, load_tokens
from server.engine.config import EngineConfig
from server.heap import tune_heap
from server.http_server import HttpLimits
from server.listeners import OTHER_FILES, Listeners, PortUnavailable, raise_open_file_limit
from server.openai_speech import OPENAI_TTS_MODELS
from server.voices.config import VoicesConfig, default_voices_dir
from server.voices.registry import VoiceRegistry
from server.voices.tenants import TENANTS_DIR

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


def _names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated model names, got {text!r}")
    return names


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("csm-serve")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csm-serve",
        description="Serve Sesame's CSM-1B over gRPC (csm.v1.Speech) and an OpenAI-compatible HTTP API "
                    "(POST /v1/audio/speech) with continuous batching.",
        epilog="Models: --model bench (the default), tiny and csm-1b are presets with random weights, "
               "for demos and tests without a download: their audio is noise. Speech needs the real weights: "
               "--model sesame/csm-1b (a gated hub model) or a directory holding them.",
    )
    parser.add_argument("--version", action="version", version=f"csm-serve {_package_version()}")

    def flag(name: str, env: str, default, help: str, **kwargs) -> None:
        # A string default goes through `type`, so a bad environment value fails like a bad flag.
        value = os.environ.get(env, default)
        shown = "unset" if default is None else default
        parser.add_argument(name, default=value, help=f"{help} [env {env}; default {shown}]", **kwargs)

    flag("--model", "CSM_MODEL", "bench",
         "hub id, checkpoint directory or preset. The presets csm-1b, bench and tiny have RANDOM WEIGHTS "
         "(noise, no download; csm-1b is the real architecture's size); the real model is the hub id "
         "sesame/csm-1b (gated: accept its licence on huggingface.co and set HF_TOKEN) or a local copy of it")
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
    flag("--prefix-cache-mb", "CSM_PREFIX_CACHE_MB", "512",
         "device memory for the KV rows of prompt prefixes (voices, repeated context), LRU; 0 disables", type=int)
    flag("--max-conversations", "CSM_MAX_CONVERSATIONS", "16",
         "Converse calls open at once; more get RESOURCE_EXHAUSTED", type=int)
    flag("--conversation-idle-s", "CSM_CONVERSATION_IDLE_S", "30",
         "a conversation without a turn this long gives its slot back (its context stays, as codes)", type=float)
    flag("--conversation-max-lifetime-s", "CSM_CONVERSATION_MAX_LIFETIME_S", "3600",
         "a conversation ends (RESOURCE_EXHAUSTED) this long after it opened; 0: no limit", type=float)
    flag("--torch-threads", "CSM_TORCH_THREADS", None,
         "CPU: intra-op threads of each pipeline thread (model, Mimi, output); unset: half the cores", type=int)
    flag("--output-workers", "CSM_OUTPUT_WORKERS", None,
         "output (watermark, resampling) threads; unset: with the watermark on a CPU, one per --torch-threads "
         "share of the cores, else 1", type=int)
    flag("--host", "CSM_HOST", "0.0.0.0", "address to listen on (gRPC, HTTP and metrics)")
    flag("--port", "CSM_PORT", "50051", "gRPC port", type=int)
    flag("--http-port", "CSM_HTTP_PORT", "8000",
         "OpenAI-compatible HTTP API port (/v1/audio/speech, /v1/models, /health, /ready); 0 disables", type=int)
    flag("--served-model-name", "CSM_SERVED_MODEL_NAME", None,
         "comma-separated model names the HTTP API answers to and lists; the first labels the metrics "
         f"(unset: the --model value, then {', '.join(OPENAI_TTS_MODELS)})", type=_names)
    flag("--metrics-port", "CSM_METRICS_PORT", "9090", "Prometheus /metrics port; 0 disables", type=int)
    flag("--metrics-auth", "CSM_METRICS_AUTH", "token",
         "with auth tokens configured: token (/metrics needs one, like the APIs) or none (/metrics open)",
         choices=METRICS_AUTH)
    flag("--http-header-timeout-s", "CSM_HTTP_HEADER_TIMEOUT_S", "10",
         "HTTP and metrics ports: a request's headers must be complete this long after its connection opens "
         "(or its first byte after a keep-alive pause), else 408 and the connection is closed", type=float)
    flag("--http-keep-alive-s", "CSM_HTTP_KEEP_ALIVE_S", "5",
         "HTTP and metrics ports: an idle connection between requests is closed after this long", type=float)
    flag("--http-max-connections", "CSM_HTTP_MAX_CONNECTIONS", "1000",
         "open connections per HTTP port (the API, metrics); more are closed as soon as they are accepted",
         type=int)
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
         "file of accepted bearer tokens, one per line: '<token>' (a tenant of its own) or '<tenant>:<token>' "
         "(tokens naming one tenant share its voices); env CSM_AUTH_TOKENS adds comma-separated ones")
    flag("--stream-buffer-s", "CSM_STREAM_BUFFER_S", "10",
         "seconds of audio a stream may have unread by its client before its generation pauses (0: never)",
         type=float)
    flag("--reader-stall-s", "CSM_READER_STALL_S", "30",
         "a stream paused for its client this long ends with RESOURCE_EXHAUSTED (0: never)", type=float)
    flag("--preempt-ahead-s", "CSM_PREEMPT_AHEAD_S", "2",
         "a stream whose client has this much audio unread gives its slot to a waiting request and resumes, "
         "exactly, once its client is down to half of that", type=float)
    flag("--preempt-grace-s", "CSM_PREEMPT_GRACE_S", "0.5",
         "a stream whose client has left audio unread this long without a break (its transport's window is full) "
         "gives its slot to a waiting request too, and resumes once its client has read what waited (0: off)",
         type=float)
    flag("--preempt-swap-mb", "CSM_PREEMPT_SWAP_MB", "1024",
         "host memory for the KV of preempted streams; a stream that does not fit keeps its slot", type=int)
    flag("--preempt-max", "CSM_PREEMPT_MAX", None,
         "streams preempted at once (default: --max-slots; each keeps a Mimi row; 0: never preempt)", type=int)
    flag("--max-concurrent-rpcs", "CSM_MAX_CONCURRENT_RPCS", "256",
         "calls the server handles at once (health checks included); more get RESOURCE_EXHAUSTED", type=int)
    flag("--max-message-bytes", "CSM_MAX_MESSAGE_BYTES", str(64 * 1024 * 1024),
         "largest gRPC message received or sent", type=int)
    flag("--drain-grace-s", "CSM_DRAIN_GRACE_S", "30", "on SIGTERM, seconds in-flight streams get to finish",
         type=float)
    flag("--log-format", "CSM_LOG_FORMAT", "text", "log format", choices=("text", "json"))
    flag("--voices-dir", "CSM_VOICES_DIR", default_voices_dir(),
         "directory of stored voices (with tokens: tenants/<tenant>/ per tenant); replicas that share it share "
         "their voices")
    flag("--max-voices", "CSM_MAX_VOICES", "1000",
         "voices each tenant may store; more get RESOURCE_EXHAUSTED", type=int)
    flag("--max-voice-bytes", "CSM_MAX_VOICE_BYTES", str(256 * 1024 * 1024),
         "bytes each tenant's stored voices may take; more get RESOURCE_EXHAUSTED", type=int)
    flag("--max-voice-creates", "CSM_MAX_VOICE_CREATES", "8",
         "CreateVoice calls one server holds at once, of every tenant (one encoding, the rest waiting); more get "
         "RESOURCE_EXHAUSTED with RetryInfo", type=int)
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
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start and stop lines repeat server.app's


async def serve(engine: ServedEngine, config: ServerConfig, voices: VoiceRegistry | None = None,
                listeners: Listeners | None = None) -> int:
    """Serves until SIGTERM or SIGINT, then drains (a second signal stops at once): exit code 0.
    If the engine thread stops on an error, health turns NOT_SERVING and this returns 1."""
    server = SpeechServer(engine, config, voices, listeners)
    try:
        await server.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        signalled, failed = asyncio.create_task(stop.wait()), asyncio.create_task(server.engine_failed.wait())
        await asyncio.wait((signalled, failed), return_when=asyncio.FIRST_COMPLETED)
        if server.engine_failed.is_set():
            log.critical("the engine stopped on an error: exiting so that the process is restarted")
            await server.stop(0)
            return 1
        drain = asyncio.create_task(server.drain())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, drain.cancel)
        try:
            await drain
        except asyncio.CancelledError:
            log.warning("second signal during drain: stopping now")
            await server.stop(0)
        return 0
    finally:
        engine.shutdown()


def raise_file_limit(config: ServerConfig) -> None:
    """Raises the open-files limit for the connections the ports may hold (logged); warns when
    the hard limit is too low for them."""
    before, after = raise_open_file_limit()
    if after != before:
        log.info("open files limit raised from %d to %d (the hard limit)", before, after)
    ports = (config.http_port is not None) + (config.metrics_port is not None)
    needed = ports * config.http_limits.max_connections + OTHER_FILES
    if after < needed:
        log.warning("the open files limit is %d, below the %d that --http-max-connections %d on %d HTTP port(s) "
                    "may need: raise the hard limit (ulimit -Hn, the container runtime's nofile) or lower "
                    "--http-max-connections", after, needed, config.http_limits.max_connections, ports)


def main(argv: list[str] | None = None) -> int:
    tune_heap()  # before any thread allocates (server/heap.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    try:
        server_config = ServerConfig(
            host=args.host,
            port=args.port,
            http_port=args.http_port or None,
            metrics_port=args.metrics_port or None,
            served_model_names=args.served_model_name or (),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_tokens=load_tokens(args.auth_tokens_file, os.environ.get("CSM_AUTH_TOKENS")),
            metrics_auth=args.metrics_auth,
            http_limits=HttpLimits(header_timeout_s=args.http_header_timeout_s, keep_alive_s=args.http_keep_alive_s,
                                   max_connections=args.http_max_connections),
            max_message_bytes=args.max_message_bytes,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
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
            stream_buffer_s=args.stream_buffer_s,
            reader_stall_s=args.reader_stall_s,
            preempt_ahead_s=args.preempt_ahead_s,
            preempt_grace_s=args.preempt_grace_s,
            preempt_swap_mb=args.preempt_swap_mb,
            preempt_max=args.preempt_max,
            prefix_cache_mb=args.prefix_cache_mb,
            max_conversations=args.max_conversations,
            conversation_idle_s=args.conversation_idle_s,
            conversation_max_lifetime_s=args.conversation_max_lifetime_s,
            torch_threads=args.torch_threads,
            output_workers=args.output_workers,
            watermark=args.watermark,
            watermark_key=args.watermark_key,
            watermark_weights=args.watermark_weights,
            mimi_weights=args.mimi_weights,
            tokenizer=args.tokenizer,
        )
        voices_config = VoicesConfig(directory=args.voices_dir, max_voices=args.max_voices,
                                     max_bytes=args.max_voice_bytes, max_pending_creates=args.max_voice_creates)
        server_config.ssl_context()  # TLS files that do not load fail now, not after the model has loaded
    except ValueError as exc:
        parser.error(str(exc))
    raise_file_limit(server_config)
    try:  # before the model loads: a taken port fails now, not minutes later
        listeners = Listeners.claim(server_config.host, server_config.port, server_config.http_port,
                                    server_config.metrics_port)
    except PortUnavailable as exc:
        log.error("%s", exc)
        return 1
    from server.engine.engine import build  # torch loads only once the flags are known to be valid

    log.info("loading model %r on device %s (%s)", args.model, args.device, args.dtype)
    from csm_core.companions import CompanionError

    try:
        engine = build(engine_config)  # logs loudly when the weights are random (bench, tiny)
    except (ValueError, OSError, CompanionError) as exc:
        log.error("cannot load model %r: %s", args.model, exc)
        listeners.close()
        return 1
    if server_config.auth_tokens:
        log.info("bearer-token authentication on (%d tokens, %d tenants)", len(server_config.auth_tokens),
                 len(BearerTokens(server_config.auth_tokens).tenants))
    else:
        log.warning("no auth tokens configured: any client that reaches the port may synthesize")
    from server.voices.mimi_encoder import open_registry

    try:
        voices = open_registry(engine, voices_config)
    except OSError as exc:
        log.error("cannot use the voices directory %s: %s", voices_config.directory, exc)
        listeners.close()
        return 1
    if not server_config.auth_tokens:
        log.info("voices in %s (%d stored)", voices_config.directory, voices.usage().voices)
    else:
        log.info("voices in %s, each tenant's in %s/<tenant>", voices_config.directory, TENANTS_DIR)
        orphans = voices.usage().voices
        if orphans:
            log.warning("%d voices at the top of %s belong to a server without tokens and no token reaches them: "
                        "move each tenant's into %s/<tenant>/ (docs/api.md, Tenants)", orphans,
                        voices_config.directory, TENANTS_DIR)
    engine.start()
    return asyncio.run(serve(engine, server_config, voices, listeners))


if __name__ == "__main__":
    sys.exit(main())
