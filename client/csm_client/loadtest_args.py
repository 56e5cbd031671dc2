"""csm-loadtest's command line: the flags, and what they turn into (steps, workload, SLO, connection)."""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from csm_client.connection import DEFAULT_TARGET, Connection
from csm_client.csm_say import context_turns
from csm_client.loadtest_run import StepPlan, Workload
from csm_client.loadtest_stats import PERCENTILES, RTF_DEFINITION, UNDERRUN_DEFINITION, Slo
from csm_client.request import ENCODINGS
from csm_client.version import add_version_flag

DEFAULT_CONCURRENCY = "1,2,4,8,16"
DEFAULT_RATE_DURATION_S = 60.0


@dataclass(slots=True, frozen=True)
class Invocation:
    """One parsed, validated command line."""

    args: argparse.Namespace
    mode: str  # "concurrency" or "rate"
    plans: list[StepPlan]
    workload: Workload
    slo: Slo
    connection: Connection


def parse(argv: list[str] | None) -> Invocation:
    """Parses and checks the command line; exits with a usage error (status 2) when it is wrong."""
    parser = build_parser()
    args = parser.parse_args(argv)
    mode, plans = step_plans(args, parser)
    workload = build_workload(args, parser)
    try:
        slo = Slo(ttfa_ms=args.slo_ttfa_ms, rtf=args.slo_rtf, percentile=args.slo_percentile,
                  max_error_rate=args.slo_max_error_rate)
        connection = Connection(target=args.server, token=args.token, tls=args.tls, ca_cert=args.ca_cert,
                                client_cert=args.client_cert, client_key=args.client_key)
    except ValueError as exc:
        parser.error(str(exc))
    for flag, path in (("--ca-cert", args.ca_cert), ("--client-cert", args.client_cert),
                       ("--client-key", args.client_key)):
        if path and not Path(path).is_file():
            parser.error(f"{flag} {path!r} does not exist")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install matplotlib (or install csm-serve with its dev extra)")
    return Invocation(args=args, mode=mode, plans=plans, workload=workload, slo=slo, connection=connection)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="csm-loadtest",
        description="Load test a csm-serve (csm.v1.Speech/Synthesize streams) and report, per step, "
                    "time to first audio, real-time factor, throughput and errors.",
        epilog=f"Definitions. RTF: {RTF_DEFINITION}. Time to first audio: send -> first audio chunk. "
               f"Underrun: {UNDERRUN_DEFINITION}. Throughput: audio seconds received per wall "
               "second of the step. Exit status: 0 when some request succeeded, 1 when none did or the server "
               "could not be reached, 130 when interrupted.")
    add_version_flag(p)
    load = p.add_argument_group("load (one of --concurrency / --rate)")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", metavar="N,N,...",
                      help=f"closed-loop sweep: streams kept in flight per step (default {DEFAULT_CONCURRENCY})")
    mode.add_argument("--rate", metavar="R,R,...",
                      help="open-loop steps: Poisson arrivals, requests per second")
    load.add_argument("--requests", type=int, default=None,
                      help="requests per step (concurrency default: 4 per stream, at least 8)")
    load.add_argument("--duration", type=float, default=None, metavar="S",
                      help="seconds per step during which requests are sent "
                           f"(rate default {DEFAULT_RATE_DURATION_S:g})")
    load.add_argument("--warmup", type=int, default=1,
                      help="requests sent one by one before the first step, not counted")
    load.add_argument("--timeout", type=float, default=120.0, metavar="S", help="deadline of each request")
    load.add_argument("--max-wall-s", type=float, default=600.0,
                      help="the whole run stops after this many seconds (open calls get their deadline then)")
    load.add_argument("--seed", type=int, default=0,
                      help="request i of a step uses sampling seed SEED+i; also seeds the arrival times")
    load.add_argument("--no-seed", action="store_true", help="let the server draw each request's sampling seed")

    req = p.add_argument_group("requests")
    req.add_argument("--prompts", metavar="FILE",
                     help="one utterance per line (# comments, blank lines skipped); default: the shipped set")
    req.add_argument("--text", action="append", default=[], help="an utterance to use instead (repeatable)")
    req.add_argument("--speaker", type=int, default=0, help="speaker id of every request")
    req.add_argument("--context", action="append", default=[], metavar="FILE",
                     help="context audio (WAV/FLAC/Ogg) sent with every request; repeat for several turns")
    req.add_argument("--context-text", action="append", default=[], metavar="TEXT", help="transcript of each --context")
    req.add_argument("--context-speaker", action="append", type=int, default=[], metavar="N",
                     help="speaker of each --context (default 0)")
    req.add_argument("--format", choices=sorted(ENCODINGS), default="pcm", help="output encoding (default pcm)")
    req.add_argument("--sample-rate", type=int, default=0, help="output rate in Hz (0: the model's 24000)")
    req.add_argument("--max-audio-ms", type=int, default=0, help="upper bound on each utterance (0: server default)")
    req.add_argument("--temperature", type=float, default=None)
    req.add_argument("--top-k", type=int, default=None)

    slo = p.add_argument_group(
        "SLO", "A step meets the SLO when at most --slo-max-error-rate of its requests fail and the chosen "
               "percentile of TTFA and of RTF over its successful requests are within the bounds given; the "
               "largest concurrency (or rate) among the steps that meet it is reported.")
    slo.add_argument("--slo-ttfa-ms", type=float, default=None, help="bound on the time to first audio percentile")
    slo.add_argument("--slo-rtf", type=float, default=None, help="bound on the real-time factor percentile")
    slo.add_argument("--slo-percentile", type=int, default=95, choices=PERCENTILES,
                     help="which percentile (default 95)")
    slo.add_argument("--slo-max-error-rate", type=float, default=0.0,
                     help="largest fraction of failed requests a step may have (default 0)")

    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the report as JSON")
    out.add_argument("--json-records", action="store_true", help="include every request's record in the JSON")
    out.add_argument("--csv", metavar="PATH", help="write one row per step as CSV")
    out.add_argument("--csv-records", metavar="PATH", help="write one row per request as CSV")
    out.add_argument("--plot", metavar="PNG", help="plot throughput, TTFA and RTF percentiles against the load "
                                                   "(needs matplotlib)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress line and no table")

    conn = p.add_argument_group("connection")
    conn.add_argument("--server", default=os.environ.get("CSM_SERVER", DEFAULT_TARGET),
                      help=f"host:port [env CSM_SERVER; default {DEFAULT_TARGET}]")
    conn.add_argument("--token", default=os.environ.get("CSM_TOKEN"), help="bearer token [env CSM_TOKEN]")
    conn.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    conn.add_argument("--ca-cert", help="PEM of the CA that signed the server's certificate (implies --tls)")
    conn.add_argument("--client-cert", help="PEM client certificate for mTLS (with --client-key)")
    conn.add_argument("--client-key", help="PEM client key for mTLS")
    return p


def step_plans(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, list[StepPlan]]:
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.duration is not None and not args.duration > 0:
        parser.error("--duration must be positive")
    try:
        if args.rate is not None:
            duration = args.duration if args.duration is not None or args.requests is not None \
                else DEFAULT_RATE_DURATION_S
            return "rate", [StepPlan(rate=float(r), requests=args.requests, duration_s=duration)
                            for r in _list(args.rate)]
        plans = []
        for n in (int(c) for c in _list(args.concurrency or DEFAULT_CONCURRENCY)):
            requests = args.requests if args.requests is not None or args.duration is not None else max(8, 4 * n)
            plans.append(StepPlan(concurrency=n, requests=requests, duration_s=args.duration))
        return "concurrency", plans
    except ValueError as exc:
        parser.error(f"bad --concurrency / --rate: {exc}")


def load_prompts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    if args.text:
        return tuple(args.text)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            parser.error(f"prompt file {args.prompts!r} does not exist")
        text = path.read_text()
    else:
        text = resources.files("csm_client").joinpath("prompts/default.txt").read_text()
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        parser.error(f"prompt file {args.prompts!r} has no utterances")
    return prompts


def build_workload(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Workload:
    if args.speaker < 0 or args.max_audio_ms < 0 or args.sample_rate < 0:
        parser.error("--speaker, --max-audio-ms and --sample-rate must not be negative")
    if args.timeout <= 0 or args.max_wall_s <= 0 or args.warmup < 0:
        parser.error("--timeout and --max-wall-s must be positive and --warmup not negative")
    return Workload(
        prompts=load_prompts(args, parser), speaker=args.speaker, context=tuple(context_turns(args, parser)),
        encoding=args.format, sample_rate=args.sample_rate, max_audio_ms=args.max_audio_ms,
        temperature=args.temperature, top_k=args.top_k, seed=None if args.no_seed else args.seed,
        timeout_s=args.timeout)


def settings_json(args: argparse.Namespace, workload: Workload) -> dict:
    return {
        "requests_per_step": args.requests, "duration_s": args.duration, "warmup": args.warmup,
        "timeout_s": args.timeout, "max_wall_s": args.max_wall_s, "seed": workload.seed,
        "prompts": len(workload.prompts), "prompt_source": "--text" if args.text else (args.prompts or "default"),
        "speaker": workload.speaker, "context_turns": len(workload.context), "format": workload.encoding,
        "sample_rate": workload.sample_rate, "max_audio_ms": workload.max_audio_ms,
        "temperature": workload.temperature, "top_k": workload.top_k,
    }


def _list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return items
