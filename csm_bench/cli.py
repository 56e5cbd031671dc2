"""csm-bench: the one-request reference path against the engine, on the same requests.

    csm-bench --preset bench --concurrency 1,2,4,8,16 --json out.json

Reference mode is what the original generator does per request: build the prompt,
`generate()` the whole utterance at batch 1, Mimi-decode it in one call, watermark it in one
call. Its audio is ready only at the end, so its time to first audio is the whole request.
Engine mode keeps exactly N requests in flight (closed loop) on one Engine per watermark
setting and times every AudioOut as it reaches the consumer. Every run uses the same seeded
requests; with the random `bench` weights streams rarely end early, so runs are comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace

from csm_bench.engine import EngineBench
from csm_bench.interference import INTERFERENCE_CONCURRENCY, prefill_interference
from csm_bench.reference import ReferencePath, run_reference
from csm_bench.requests import WARMUP_AUDIO_MS, make_requests
from csm_core.companions import Companions, companions_for
from csm_core.constants import FRAME_MS, QUANTIZE_MODES
from server.engine.config import EngineConfig
from server.engine.types import SynthesisParams
from server.heap import tune_heap


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4,8, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every concurrency must be >= 1, got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("reference", "engine")]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"modes are reference and engine, comma-separated; got {text!r}")
    return modes


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("csm-serve")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csm-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--version", action="version", version=f"csm-bench {_package_version()}")
    p.add_argument("--preset", default="bench",
                   help="preset (bench, tiny, csm-1b: random weights) or any model source (hub id, directory)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8, 16],
                   help="engine runs: requests in flight, comma-separated")
    p.add_argument("--max-slots", type=int, default=0,
                   help="engine slots; 0: one engine per concurrency sized to it (Mimi's CPU cost grows with slots)")
    p.add_argument("--requests", type=int, default=16, help="requests in the set every run serves")
    p.add_argument("--waves", type=int, default=0,
                   help="engine: the run at concurrency N serves W x N requests instead of --requests (0: off)")
    p.add_argument("--max-audio-ms", type=int, default=4000, help="max_audio_ms of every request")
    p.add_argument("--context-s", type=float, default=0.0, help="seconds of synthetic context audio per request")
    p.add_argument("--watermark", choices=("on", "off", "both"), default="both",
                   help="runs with the watermark, without, or both (one engine each)")
    p.add_argument("--modes", type=_modes, default=["reference", "engine"], help="reference,engine or one of them")
    p.add_argument("--prefill-interference", action="store_true",
                   help="also run 7 streams, inject one long-context request and measure their gaps while it prefills")
    p.add_argument("--interference-context-s", type=float, default=20.0,
                   help="context audio of the injected request (20 s is about 250 prompt positions)")
    p.add_argument("--prefill-budget", type=int,
                   help="engine: prompt positions prefilled per step while streams decode (default: the engine's)")
    p.add_argument("--idle-prefill-budget", type=int,
                   help="engine: the same while no stream decodes (default: the engine's)")
    p.add_argument("--torch-threads", type=int, help="engine: intra-op threads per pipeline thread (default: the engine's)")
    p.add_argument("--mimi-frames-per-call", type=int, help="engine: most steps merged into one Mimi call")
    p.add_argument("--output-workers", type=int, help="engine: output (watermark) threads (default: the engine's)")
    p.add_argument("--prefix-cache-mb", type=int, default=0,
                   help="engine: prefix cache budget; off by default, so that every request (and the injected one, "
                        "sent again after the warm-up) is prefilled as on a server without it (csm-bench-voices "
                        "measures the cache)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="engine: backbone and depth decoder weights (default: the engine's)")
    p.add_argument("--cuda-graphs", type=_on_off, metavar="{on,off}",
                   help="engine on CUDA: replay each step from CUDA graphs (default: the engine's)")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress and no table")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.requests < 1:
        p.error("--requests must be >= 1")
    if args.waves < 0:
        p.error("--waves must be >= 0")
    if args.max_audio_ms < FRAME_MS:
        p.error(f"--max-audio-ms must be at least one frame ({FRAME_MS} ms)")
    if args.context_s < 0 or args.interference_context_s <= 0:
        p.error("--context-s must be >= 0 and --interference-context-s > 0")


def _fmt(value, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def format_table(runs: list[dict]) -> str:
    head = (f"{'mode':<9}{'N':>3} {'wm':<3}{'audio_s':>8}{'wall_s':>8}{'x_rt':>7}{'fps':>7}"
            f"{'ttfa50':>8}{'ttfa95':>8}{'gap50':>7}{'gap95':>7}{'gapmax':>7}"
            f"{'step':>7}{'batch':>6}{'bb':>7}{'depth':>7}{'mimi':>7}{'mimi_b':>7}{'T':>5}{'wm':>7}{'other':>7}{'oth%':>6}")
    lines = [head]
    short = {"reference": "ref", "engine": "engine", "engine-prefill-interference": "prefill+"}
    for r in runs:
        ttfa, gap, bd = r["ttfa_ms"] or {}, r["gap_ms"] or {}, r.get("breakdown_ms", {})
        other_frac = r.get("other_frac")
        lines.append(
            f"{short[r['mode']]:<9}{r['concurrency']:>3} {'on' if r['watermark'] else 'off':<3}"
            f"{r['audio_s']:>8.2f}{r['wall_s']:>8.2f}{r['throughput_audio_s_per_s']:>7.2f}{r['frames_per_s']:>7.1f}"
            f"{_fmt(ttfa.get('p50'), 8, 0)}{_fmt(ttfa.get('p95'), 8, 0)}"
            f"{_fmt(gap.get('p50'), 7)}{_fmt(gap.get('p95'), 7)}{_fmt(gap.get('max'), 7)}"
            f"{_fmt(r.get('step_ms'), 7)}{_fmt(r.get('mean_batch'), 6)}"
            + "".join(_fmt(bd.get(k), 7) for k in ("backbone", "depth", "mimi", "mimi_busy"))
            + _fmt(r.get("mimi_frames_per_call"), 5)
            + "".join(_fmt(bd.get(k), 7) for k in ("watermark", "other"))
            + _fmt(None if other_frac is None else 100 * other_frac, 6)
        )
        if r["mode"] == "reference":
            lines[-1] += f"   (per request: {', '.join(f'{k} {v:.0f}' for k, v in bd.items())} ms)"
        if "interference" in r:
            i = r["interference"]
            lines.append(f"  prefill of {i['prompt_positions']} positions ({i['prefill_steps']} steps): "
                         f"others' frame gap p95 "
                         f"{_fmt(gap.get('p95'), 0)} ms vs step {_fmt(i['baseline_step_ms'], 0)} ms "
                         f"(before {_fmt(i['baseline_step_ms_before'], 0)}, after {_fmt(i['baseline_step_ms_after'], 0)}) = "
                         f"{_fmt(i['gap_p95_over_baseline_step'], 0, 2)}x (target <= 2x); "
                         f"longest pause between steps {_fmt(i['between_steps_ms_max'], 0)} ms")
            lines.append(f"  while its {i['context_s']:g} s of context were encoded ({_fmt(i['encode_ms'], 0)} ms): "
                         f"others' frame gap p95 {_fmt((i['gap_ms_during_encode'] or {}).get('p95'), 0)} ms = "
                         f"{_fmt(i['encode_gap_p95_over_baseline_step'], 0, 2)}x; delivered audio's "
                         f"gap p95 {_fmt((i['delivered_gap_ms_before'] or {}).get('p95'), 0)} ms before the injection, "
                         f"{_fmt((i['delivered_gap_ms_during_prefill'] or {}).get('p95'), 0)} ms during its prefill")
    lines.append("ms everywhere; gaps per frame; step breakdown: engine = mean per step (mimi = waiting for "
                 "the Mimi thread, mimi_b and wm = Mimi and output threads' busy time per step, T = frames per "
                 "Mimi call); ref = mean per request")
    return "\n".join(lines)


def engine_tuning(args: argparse.Namespace) -> dict:
    """EngineConfig fields set on the command line (the others keep the engine's defaults)."""
    names = ("prefill_budget", "idle_prefill_budget", "torch_threads", "mimi_frames_per_call", "output_workers",
             "prefix_cache_mb", "quantize", "cuda_graphs")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def engine_runs(args: argparse.Namespace, sources: Companions, requests: list[SynthesisParams], watermark: bool,
                interference: bool, say: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The engine runs of one watermark setting, on one engine (plus one of 8 slots for the
    interference scenario when the concurrency list stays below 8). Returns runs and engine info."""
    runs: list[dict] = []
    on_off = "on" if watermark else "off"
    fixed = args.max_slots
    slots = fixed or max(args.concurrency)
    info = None
    bench = None
    try:
        if "engine" in args.modes:
            for n in args.concurrency:
                if bench is None or (not fixed and bench.max_slots != n):
                    if bench is not None:
                        bench.close()
                    slots = fixed or n
                    say(f"starting the engine ({args.preset}, {slots} slots, watermark {on_off})")
                    bench = EngineBench(args.preset, sources, args.device, args.dtype, slots, watermark, engine_tuning(args))
                    info, tuning = bench.engine.info(), bench.tuning()
                    bench.warm_up(requests, slots)
                say(f"engine, concurrency {n}, watermark {on_off}")
                served = requests[: args.waves * n] if args.waves else requests[: args.requests]
                runs.append(bench.run(served, n, f"c{n}"))
        if bench is None or (interference and slots != INTERFERENCE_CONCURRENCY and not fixed):
            if bench is not None:
                bench.close()
            slots = fixed or INTERFERENCE_CONCURRENCY
            bench = EngineBench(args.preset, sources, args.device, args.dtype, slots, watermark, engine_tuning(args))
            info, tuning = bench.engine.info(), bench.tuning()
            bench.warm_up(requests, slots)
        if interference:
            say(f"prefill interference: {args.interference_context_s:g} s of context into "
                f"{INTERFERENCE_CONCURRENCY - 1} running streams, watermark {on_off}")
            runs.append(prefill_interference(bench, requests, args.interference_context_s))
    finally:
        bench.close()
    return runs, {"device": info.device, "dtype": info.dtype, "engine": tuning}


def main(argv: list[str] | None = None) -> int:
    tune_heap()  # the allocator csm-serve runs with (server/heap.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    sources = companions_for(args.preset)
    requests = make_requests(max(args.requests, args.waves * max(args.concurrency)), args.max_audio_ms, args.context_s)
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.watermark]
    runs: list[dict] = []
    report = {"preset": args.preset, "device": args.device, "dtype": args.dtype, "requests": args.requests,
              "waves": args.waves, "max_audio_ms": args.max_audio_ms, "context_s": args.context_s,
              "concurrency": args.concurrency, "runs": runs}
    if "reference" in args.modes:
        say(f"loading the reference path ({args.preset})")
        ref = ReferencePath(args.preset, sources, args.device, args.dtype, EngineConfig().prefill_chunk)
        report["device"] = str(ref.device)
        report["dtype"] = str(next(ref.model.parameters()).dtype).replace("torch.", "")
        try:
            ref.synthesize(replace(requests[0], max_audio_ms=min(args.max_audio_ms, WARMUP_AUDIO_MS)),
                           True in settings)
            for wm in settings:
                say(f"reference, watermark {'on' if wm else 'off'}")
                runs.append(run_reference(ref, requests[: args.requests], wm))
        finally:
            ref.close()
        del ref  # its model's memory goes back before the engines load theirs
    for wm in settings:
        # the interference scenario runs once, without the watermark when that is measured
        interference = args.prefill_interference and wm == settings[0]
        if "engine" in args.modes or interference:
            engine_run_list, info = engine_runs(args, sources, requests, wm, interference, say)
            runs.extend(engine_run_list)
            report.update(info)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if not args.quiet:
        print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
