"""The GPU check's measurements; scripts/gpu_check.sh runs it after pytest tests/test_cuda.py.

    python scripts/gpu_check.py --out DIR [--cpu-dry-run] [--budget-s 420] [--pytest-rc RC]

Phases, each written to DIR/gpu_check.json (csm-bench's reports inside) as it ends; one that fails
records its error and the next one runs; one that would not fit the time left is recorded as
skipped, so they run in order of importance: parity, sweep "graphs", precision, the other sweeps.
- parity: the engine's production path on CUDA (fp32; CUDA graphs, FlexAttention) against the
  one-request reference path on CPU (fp32, exact), greedy, bench preset: frames equal per request,
  and the largest logit difference along the CPU's frames (teacher-forced: free-running greedy
  frames part ways at the first near-tie, and random weights give flat logits).
- precision: bf16 against fp32 on csm-1b random weights (CUDA, flex): greedy frame agreement and
  the logit difference along fp32's frames.
- sweep: csm-bench on csm-1b bf16, one engine of 256 slots per configuration: "graphs" (CUDA
  graphs) with watermark off and on at 1, 16, 64, 128, 256 streams; "int8", "float8" and "eager"
  (graphs off) at 1, 64, 256 streams, watermark off. Each run serves one wave of N requests of
  2 s of audio.
DIR/gpu_check.md holds the summary table. --cpu-dry-run runs the same flow on CPU with the tiny
preset and a tiny sweep (tests/test_gpu_check.py), so the script never rots.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # a checkout not installed (PYTHONPATH comes first)

from csm_bench import cli as bench  # noqa: E402
from csm_core.checkpoint import load_model, resolve_device  # noqa: E402
from csm_core.constants import FRAME_MS  # noqa: E402
from csm_core.framing import build_prompt  # noqa: E402
from csm_core.generate import frame_logits, generate  # noqa: E402
from csm_core.sampling import SamplingParams  # noqa: E402
from csm_core.text import OFFLINE_TOKENIZER, load_tokenizer  # noqa: E402
from server.engine.config import EngineConfig  # noqa: E402
from server.engine.engine import build  # noqa: E402
from server.engine.types import Finished, SynthesisParams  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


@dataclass(frozen=True)
class Plan:
    device: str
    dtype: str  # of the sweep
    parity_preset: str
    parity_requests: int
    parity_frames: int
    precision_preset: str
    precision_requests: int
    precision_frames: int
    sweep_preset: str
    sweep_slots: int
    concurrency: tuple[int, ...]  # the main configuration's
    few_concurrency: tuple[int, ...]  # the other configurations'
    audio_ms: int
    # seconds a phase is expected to take at most: it is skipped when less is left
    phase_s: dict = field(default_factory=dict)


GPU = Plan("cuda", "bfloat16", "bench", 2, 40, "csm-1b", 1, 20, "csm-1b", 256, (1, 16, 64, 128, 256), (1, 64, 256),
           2000, {"parity": 60, "precision": 80, "graphs": 150, "int8": 50, "float8": 50, "eager": 60})
DRY_RUN = Plan("cpu", "float32", "tiny", 2, 6, "tiny", 1, 6, "tiny", 2, (1, 2), (2,), 240,
               {"parity": 30, "precision": 20, "graphs": 60, "int8": 25, "float8": 25, "eager": 25})

# name -> csm-bench flags, and whether it takes the main concurrency list
SWEEP = {
    "graphs": (["--cuda-graphs", "on", "--quantize", "none", "--watermark", "both"], True),
    "int8": (["--cuda-graphs", "on", "--quantize", "int8-weight", "--watermark", "off"], False),
    "float8": (["--cuda-graphs", "on", "--quantize", "float8", "--watermark", "off"], False),
    "eager": (["--cuda-graphs", "off", "--quantize", "none", "--watermark", "off"], False),
}

TEXTS = ("Hello there, thanks for calling.", "The weather tomorrow looks bright.",
         "Turn left at the second light.", "Please hold for a moment.")


def frames_agreement(got: torch.Tensor, want: torch.Tensor) -> dict:
    """Two greedy frame sequences [n, 32]: equal, the frames before they part, codes equal overall."""
    n = min(len(got), len(want))
    same = (got[:n] == want[:n]).all(dim=1)
    first_diff = int((~same).nonzero()[0]) if not bool(same.all()) else n
    return {"equal": bool(len(got) == len(want) and same.all()), "frames": [len(got), len(want)],
            "frames_before_parting": first_diff,
            "codes_equal": round(float((got[:n] == want[:n]).float().mean()), 4) if n else None}


def logit_difference(got: torch.Tensor, want: torch.Tensor) -> dict:
    """[T, 32, vocab] each: the largest difference, also relative to the largest logit there."""
    diff = (got.float() - want.float()).abs().amax(-1)  # [T, 32]
    scale = want.float().abs().amax(-1)
    return {"max_abs": round(float(diff.max()), 6), "max_rel": round(float((diff / scale).max()), 6),
            "greedy_choices_equal": round(float((got.argmax(-1) == want.argmax(-1)).float().mean()), 4)}


def prompts(n: int) -> list:
    tokenizer = load_tokenizer(OFFLINE_TOKENIZER)
    return [build_prompt(tokenizer, [], i % 2, TEXTS[i % len(TEXTS)]) for i in range(n)]


def engine_greedy_frames(plan: Plan, n: int, frames: int) -> list[torch.Tensor]:
    """The engine's production path on plan.device, fp32: each request's greedy frames [f, 32]."""
    engine = build(EngineConfig(model=plan.parity_preset, device=plan.device, dtype="float32", max_slots=n,
                                watermark=False))
    got: dict[str, list[torch.Tensor]] = {}
    engine.add_frame_observer(lambda rid, codes: got.setdefault(rid, []).append(codes))
    engine.start()
    try:
        if not engine.wait_ready(600):
            raise RuntimeError("the engine did not get ready in 600 s")
        streams = [engine.submit(SynthesisParams(text=TEXTS[i % len(TEXTS)], speaker=i % 2, temperature=0.0,
                                                 seed=i, max_audio_ms=frames * FRAME_MS, request_id=f"parity-{i}"))
                   for i in range(n)]
        for s in streams:
            finished = [ev for ev in s if isinstance(ev, Finished)][0]
            if finished.error:
                raise RuntimeError(finished.error)
    finally:
        engine.shutdown()
    return [torch.stack(got[f"parity-{i}"]) for i in range(n)]


def flex_model(preset: str, device: str, dtype: str):
    model = load_model(preset, device, dtype).model
    model.set_attention("flex")
    model.setup_caches(1)
    return model


def phase_parity(plan: Plan) -> dict:
    ps = prompts(plan.parity_requests)
    got = engine_greedy_frames(plan, plan.parity_requests, plan.parity_frames)
    model = flex_model(plan.parity_preset, plan.device, "float32")
    reference = load_model(plan.parity_preset).model  # csm_core.generate's path on CPU: fp32, exact
    reference.setup_caches(1)
    reference.set_exact(True)
    requests = []
    for prompt, frames in zip(ps, got):
        want = generate(reference, prompt, max_frames=plan.parity_frames, sampling=GREEDY).frames
        entry = frames_agreement(frames, want)
        entry["logits_along_cpu_frames"] = logit_difference(frame_logits(model, prompt, want),
                                                            frame_logits(reference, prompt, want))
        requests.append(entry)
    return {"preset": plan.parity_preset, "what": f"engine on {plan.device} fp32 vs csm_core.generate on cpu fp32",
            "requests_equal": sum(r["equal"] for r in requests), "requests": requests}


def phase_precision(plan: Plan) -> dict:
    fp32 = flex_model(plan.precision_preset, plan.device, "float32")
    bf16 = flex_model(plan.precision_preset, plan.device, "bfloat16")
    requests = []
    for prompt in prompts(plan.precision_requests):
        want = generate(fp32, prompt, max_frames=plan.precision_frames, sampling=GREEDY).frames
        got = generate(bf16, prompt, max_frames=plan.precision_frames, sampling=GREEDY).frames
        entry = frames_agreement(got, want)
        entry["logits_along_fp32_frames"] = logit_difference(frame_logits(bf16, prompt, want),
                                                             frame_logits(fp32, prompt, want))
        requests.append(entry)
    return {"preset": plan.precision_preset, "what": f"bf16 vs fp32 on {plan.device}, flex attention",
            "requests": requests}


def phase_sweep(plan: Plan, name: str) -> dict:
    flags, main_list = SWEEP[name]
    concurrency = plan.concurrency if main_list else plan.few_concurrency
    quantize = flags[flags.index("--quantize") + 1]
    if quantize == "float8":
        from csm_core.quantize import check_quantize

        try:
            check_quantize("float8", resolve_device(plan.device), torch.bfloat16)
        except ValueError as e:
            return {"status": "refused", "reason": str(e)}
    path = Path(tempfile.mkdtemp()) / f"bench-{name}.json"  # its report goes into gpu_check.json
    argv = ["--preset", plan.sweep_preset, "--device", plan.device, "--dtype", plan.dtype, "--modes", "engine",
            "--max-slots", str(plan.sweep_slots), "--concurrency", ",".join(map(str, concurrency)), "--waves", "1",
            "--max-audio-ms", str(plan.audio_ms), "--json", str(path), "--quiet", *flags]
    if bench.main(argv) != 0:
        raise RuntimeError(f"csm-bench {' '.join(argv)} failed")
    report = json.loads(path.read_text())
    return {"argv": argv, "report": report}


def environment(plan: Plan) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": plan.device}
    try:
        import torchao

        env["torchao"] = torchao.__version__
    except ImportError as e:
        env["torchao"] = f"missing: {e}"
    if plan.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        env["cuda"] = torch.version.cuda
    return env


def summary(result: dict) -> str:
    env = result["environment"]
    lines = [f"# GPU check: {env.get('gpu', env['device'])} (torch {env['torch']}, torchao {env['torchao']})", "",
             f"pytest tests/test_cuda.py: exit {result['pytest_rc']}", ""]
    phases = result["phases"]
    for name in ("parity", "precision"):
        p = phases.get(name, {})
        if p.get("status") != "ok":
            lines.append(f"{name}: {p.get('status')} {p.get('error', p.get('reason', ''))}".rstrip())
            continue
        r = p["result"]
        key = "logits_along_cpu_frames" if name == "parity" else "logits_along_fp32_frames"
        parts = [f"{q['frames_before_parting']}/{q['frames'][1]} frames before parting, codes {q['codes_equal']}; "
                 f"teacher-forced: logits max rel {q[key]['max_rel']}, greedy choices {q[key]['greedy_choices_equal']}"
                 for q in r["requests"]]
        lines.append(f"{name} ({r['what']}, {r['preset']}): " + "; ".join(parts))
    lines += ["", "| config | N | wm | x real time | per stream | TTFA p50 / p95 ms | gap p95 ms | step ms | "
                  "backbone / depth / Mimi wait ms |", "|---|---|---|---|---|---|---|---|---|"]
    at_real_time = []
    for name in SWEEP:
        p = phases.get(f"sweep-{name}", {})
        if p.get("status") != "ok":
            lines.append(f"| {name} | {p.get('status')}: {p.get('error', p.get('reason', ''))} |||||||| ")
            continue
        best = {}
        for run in p["result"]["report"]["runs"]:
            per_stream = run["throughput_audio_s_per_s"] / run["concurrency"]
            if per_stream >= 1.0:
                best[run["watermark"]] = max(best.get(run["watermark"], 0), run["concurrency"])
            ttfa, gap, bd = run["ttfa_ms"] or {}, run["gap_ms"] or {}, run["breakdown_ms"]
            lines.append(f"| {name} | {run['concurrency']} | {'on' if run['watermark'] else 'off'} | "
                         f"{run['throughput_audio_s_per_s']:.2f} | {per_stream:.2f} | "
                         f"{ttfa.get('p50', math.nan):.0f} / {ttfa.get('p95', math.nan):.0f} | "
                         f"{gap.get('p95', math.nan):.0f} | {run['step_ms']:.1f} | "
                         f"{bd['backbone']:.1f} / {bd['depth']:.1f} / {bd['mimi']:.1f} |")
        at_real_time += [f"{name} wm {'on' if wm else 'off'}: {n}" for wm, n in sorted(best.items())]
    lines += ["", "per stream = x real time / N (each stream's audio per wall second, TTFA included). Most streams "
                  "at >= 1.0 each, of those tried: " + (", ".join(at_real_time) or "none")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same flow on CPU: tiny preset, tiny sweep")
    ap.add_argument("--budget-s", type=float, default=420, help="seconds this script may take")
    ap.add_argument("--pytest-rc", type=int, default=None, help="exit status of pytest tests/test_cuda.py")
    args = ap.parse_args(argv)
    plan = DRY_RUN if args.cpu_dry_run else GPU
    if plan.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu-dry-run")
    deadline = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"plan": asdict(plan), "environment": environment(plan), "pytest_rc": args.pytest_rc, "phases": {}}
    # the most telling first: what runs last is what a short budget skips
    jobs = [("parity", lambda: phase_parity(plan)), ("sweep-graphs", lambda: phase_sweep(plan, "graphs")),
            ("precision", lambda: phase_precision(plan))]
    jobs += [(f"sweep-{name}", lambda name=name: phase_sweep(plan, name)) for name in SWEEP if name != "graphs"]
    for name, job in jobs:
        left = deadline - time.monotonic()
        if left < plan.phase_s[name.removeprefix("sweep-")]:
            result["phases"][name] = {"status": "skipped", "reason": f"{left:.0f} s left of the budget"}
        else:
            print(f"gpu_check: {name} ({left:.0f} s left)", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                out = job()
                entry = out if out.get("status") == "refused" else {"status": "ok", "result": out}
            except Exception as e:  # one phase's failure must not cost the others their run
                entry = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            entry["seconds"] = round(time.monotonic() - t0, 1)
            result["phases"][name] = entry
        gc.collect()
        if plan.device == "cuda":
            torch.cuda.empty_cache()
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
        (args.out / "gpu_check.md").write_text(summary(result))
    print(summary(result))
    failed = [n for n, p in result["phases"].items() if p["status"] == "failed"]
    return 1 if failed or args.pytest_rc else 0


if __name__ == "__main__":
    sys.exit(main())
