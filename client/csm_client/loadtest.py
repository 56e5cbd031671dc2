"""csm-loadtest: load a csm-serve over gRPC and report latency, real-time factor and throughput.

    csm-loadtest --server host:50051 --concurrency 1,2,4,8,16 --requests 32 \\
        --slo-ttfa-ms 500 --slo-rtf 1.0 --json out.json --csv steps.csv --plot out.png
    csm-loadtest --server host:50051 --rate 0.5,1,2 --duration 60 --json rate.json

A concurrency step keeps N streams in flight (closed loop); a rate step sends requests at
Poisson arrival times (open loop). Every step ends after --requests or --duration, whichever
comes first, and the whole run after --max-wall-s. All streams share one channel.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

import grpc

from csm_client.aio_client import AsyncSpeechClient
from csm_client.connection import Connection
from csm_client.errors import explain
from csm_client.loadtest_args import Invocation, parse, settings_json
from csm_client.loadtest_progress import Progress
from csm_client.loadtest_report import RunResult, table, write_json, write_records_csv, write_steps_csv
from csm_client.loadtest_run import run_closed_step, run_open_step, run_request
from csm_client.loadtest_stats import summarize
from csm_wire import speech_pb2 as pb


class ServerUnreachable(RuntimeError):
    pass


async def run(invocation: Invocation, result: RunResult, progress: Progress) -> None:
    """Fills `result` step by step, so that an interrupted run still reports its finished steps."""
    args, workload, connection = invocation.args, invocation.workload, invocation.connection
    wall_deadline = time.perf_counter() + args.max_wall_s
    async with AsyncSpeechClient(connection=connection) as client:
        try:
            info = await client.model_info(timeout=min(10.0, args.max_wall_s))
        except grpc.RpcError as error:
            raise ServerUnreachable(f"GetModelInfo on {connection.target} failed: {explain(error)}") from None
        result.server.update(server_json(connection, info))
        if info.random_weights and workload.max_audio_ms == 0:
            progress.say(f"note: {connection.target} serves random weights, so streams run to the default "
                         f"bound of their text (2 s + 150 ms a character, at most {info.default_max_audio_ms} "
                         "ms); pass --max-audio-ms to set it")
        for index in range(args.warmup):
            progress.say(f"warm-up request {index + 1}/{args.warmup}")
            await run_request(client, workload, -1, index, time.perf_counter(), wall_deadline)
        rng = random.Random(args.seed)
        for plan in invocation.plans:
            if time.perf_counter() >= wall_deadline:
                result.skipped.append(plan.label)
                continue
            step = len(result.steps)
            progress.begin(plan.label, plan.requests)
            refresher = asyncio.create_task(progress.refresh())
            step_start = time.perf_counter()
            try:
                if plan.concurrency is not None:
                    records = await run_closed_step(client, workload, plan, step, wall_deadline, progress.observe)
                else:
                    records = await run_open_step(client, workload, plan, step, wall_deadline, progress.observe, rng)
            finally:
                refresher.cancel()
            ended = time.perf_counter()
            progress.end()
            records.sort(key=lambda r: r.index)
            result.records.extend(records)
            result.steps.append(summarize(plan, records, ended - step_start, ended >= wall_deadline,
                                         invocation.slo))


def server_json(connection: Connection, info: pb.ModelInfo) -> dict:
    fields = ("model_source", "preset", "random_weights", "device", "dtype", "max_slots", "max_queue",
              "max_audio_ms", "default_max_audio_ms", "watermark_enabled")
    return {"target": connection.target, "tls": connection.secure, **{f: getattr(info, f) for f in fields}}


def main(argv: list[str] | None = None) -> int:
    invocation = parse(argv)
    args = invocation.args
    progress = Progress(args.quiet)
    result = RunResult(server={}, mode=invocation.mode, settings=settings_json(args, invocation.workload),
                       slo=invocation.slo)
    status = 0
    try:
        asyncio.run(run(invocation, result, progress))
    except ServerUnreachable as exc:
        print(f"csm-loadtest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.say(f"csm-loadtest: interrupted; reporting the {len(result.steps)} finished step(s)")
        result.skipped.extend(p.label for p in invocation.plans[len(result.steps) + len(result.skipped):])
        result.interrupted = True
        status = 130

    if args.json:
        write_json(result, args.json, args.json_records)
    if args.csv:
        write_steps_csv(result, args.csv)
    if args.csv_records:
        write_records_csv(result, args.csv_records)
    if args.plot and result.steps:
        from csm_client.loadtest_plot import write_plot

        write_plot(result, args.plot)
    if not args.quiet:
        print(table(result))
    if status:
        return status
    return 0 if any(step.ok for step in result.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
