"""The GPU check's conductor (scripts/gpu_check.sh runs it): every phase of scripts/gpu_phases.py in
a process of its own, each with its own time limit, then the summary table, printed last.

    python scripts/gpu_check.py --out DIR --budget-s 450 [--cpu-dry-run]

It imports no torch, so nothing a phase does to CUDA can hang it. A phase runs when at least
MIN_S of its limit is left of the budget, under min(limit, what is left): its own watchdog
(faulthandler) writes every thread's traceback and ends it at the limit; if it is still there
GRACE_S later, its process group is killed. Either way the result is "timed out", its
tracebacks go into the log and the JSON, and the next phase runs. All phases share one
TorchInductor/Triton cache directory, so a kernel compiled once (FlexAttention of one cache
shape) is loaded, not compiled, by the later phases. DIR gets gpu_check.json (every phase as it
ends) and gpu_check.md (the summary); gpu_check.sh adds gpu_check.log (all output) and, on a
GPU, nvidia-smi.txt. Test hook: CSM_GPU_CHECK_LIMITS=NAME=S[,NAME=S] overrides limits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 15  # after a phase's limit: its watchdog's tracebacks and exit, then SIGKILL
RESERVE_S = 5  # kept for the summary
MIN_S = 20  # a phase starts only with this much of its limit left

# (phase, GPU limit s, CPU dry-run limit s), most telling first: a short budget skips the last. The
# dry run's limits are wide: a shared 2-core machine under others' load runs its phases 2-4x slower.
PHASES = (("pytest", 100, 150), ("steps", 90, 150), ("sweep-off", 110, 180), ("sweep-on", 80, 180),
          ("parity", 50, 240), ("precision", 45, 180), ("int8", 45, 120), ("float8", 40, 60), ("eager", 40, 60))


# What a CPU cannot run, refused by the dry run without a process (a torch start costs 10-30 s there)
REFUSED_ON_CPU = {"float8": "float8 needs a CUDA device of compute capability >= 8.9 (Ada, Hopper or newer)",
                  "eager": "graphs off is what every CPU phase runs already (CUDA graphs are CUDA's)"}


def limits(dry_run: bool) -> dict[str, float]:
    out = {name: float(cpu if dry_run else gpu) for name, gpu, cpu in PHASES}
    for item in filter(None, os.environ.get("CSM_GPU_CHECK_LIMITS", "").split(",")):
        name, _, seconds = item.partition("=")
        out[name] = float(seconds)
    return out


def run_phase(name: str, plan: str, limit: float, work: Path, env: dict) -> dict:
    result, tb = work / f"{name}.json", work / f"{name}.traceback"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_phases.py"), name, "--plan", plan, "--limit", f"{limit:.0f}",
           "--result", str(result), "--traceback", str(tb)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)  # its own group: killed whole
    try:
        proc.wait(timeout=limit + GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever it left: compile workers, or itself past its limit
    except ProcessLookupError:
        pass
    proc.wait()
    seconds = round(time.monotonic() - t0, 1)
    if result.exists():
        entry = json.loads(result.read_text())
    else:
        how = "its watchdog ended it" if proc.returncode == 1 else f"exit {proc.returncode}"
        entry = {"status": "timed out" if seconds >= limit else "died",
                 "error": f"no result after {seconds:.0f} s of its {limit:.0f} s limit ({how})"}
    dump = tb.read_text() if tb.exists() else ""
    if dump.strip():
        entry["watchdog_tracebacks"] = dump[-12000:]
        print(f"== {name}: tracebacks at its limit\n{dump}", flush=True)
    entry.update(seconds=seconds, limit_s=limit)
    return entry


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _environment(result: dict) -> dict:
    return next((p["environment"] for p in result["phases"].values() if "environment" in p), {})


def _steps_lines(p: dict) -> list[str]:
    r = p["result"]
    peak = r["peak"]
    lines = [f"steps: {r['preset']} {r['dtype']}, {r['max_slots']} slots, every row at {r['context']} keys, "
             f"{r['iters']} steps per bucket timed with {r['timer']} (capture {r['capture_s']} s). Roofline: "
             + (f"{peak['bytes_per_s'] / 1e12:g} TB/s, {peak['flops_per_s'] / 1e12:g} TFLOP/s ({peak['source']})"
                if peak else "no peak known for this device"), "",
             "| batch | ms/step | wall ms | GB/s | TFLOP/s | roofline ms | of roofline | bound | audio-s/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['batch']} | {row['ms']:.3f} | {row['wall_ms']:.3f} | {row['gb_s']:.0f} | "
                     f"{row['tflop_s']:.1f} | {_f(row.get('roofline_ms'), 3)} | {_f(row.get('of_roofline'), 2)} | "
                     f"{row.get('bound', '-')} | {row['audio_s_per_s']:.0f} |")
    return lines


def _sweep_lines(phases: dict) -> list[str]:
    lines = ["| config | N | wm | audio-s/s | per stream | TTFA p50 / p95 ms | worst gap ms | step ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("sweep-off", "sweep-on", "int8", "float8", "eager"):
        p = phases.get(name, {})
        if p.get("status") != "ok":
            continue
        for run in p["result"]["report"]["runs"]:
            ttfa, gap = run["ttfa_ms"] or {}, run.get("chunk_gap_ms") or {}
            rate = run["throughput_audio_s_per_s"]
            lines.append(f"| {name} | {run['concurrency']} | {'on' if run['watermark'] else 'off'} | "
                         f"{rate:.2f} | {rate / run['concurrency']:.2f}"
                         f" | {_f(ttfa.get('p50'), 0)} / {_f(ttfa.get('p95'), 0)} | {_f(gap.get('max'), 0)} | "
                         f"{_f(run.get('step_ms'))} |")
    return lines


def _agreement_line(name: str, p: dict) -> str:
    r = p["result"]
    key = "logits_along_cpu_frames" if name == "parity" else "logits_along_fp32_frames"
    parts = [f"{q['frames_before_parting']}/{q['frames'][1]} frames before parting, codes {q['codes_equal']}; "
             f"teacher-forced logits max rel {q[key]['max_rel']}, greedy choices {q[key]['greedy_choices_equal']}"
             for q in r["requests"]]
    return f"{name} ({r['what']}, {r['preset']}): " + "; ".join(parts)


def summary(result: dict) -> str:
    env, phases = _environment(result), result["phases"]
    used = sum(p.get("seconds", 0) for p in phases.values())
    lines = [f"# GPU check: {env.get('gpu', 'no GPU (' + result['plan'] + ')')}: torch {env.get('torch')}, "
             f"torchao {env.get('torchao')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; "
             f"phases took {used:.0f} s of a {result['budget_s']:.0f} s budget", "",
             "| phase | status | s | limit s | note |", "|---|---|---|---|---|"]
    for name, p in phases.items():
        note = p.get("error") or p.get("reason") or ""
        if "watchdog_tracebacks" in p:
            note += " (tracebacks in gpu_check.json and the log)"
        lines.append(f"| {name} | {p['status']} | {_f(p.get('seconds'), 0)} | {_f(p.get('limit_s'), 0)} | "
                     f"{note.splitlines()[0] if note else ''} |")
    tests = phases.get("pytest", {}).get("result")
    if tests:
        lines += ["", f"pytest tests/test_cuda.py: {tests['passed']} passed, {tests['failed']} failed, "
                      f"{tests['skipped']} skipped"] + [f"- FAILED {t}" for t in tests["failures"]]
    if phases.get("steps", {}).get("status") == "ok":
        lines += [""] + _steps_lines(phases["steps"])
    lines += ["", "engine (csm-bench, one wave of N requests; per stream = audio-s/s / N, TTFA included; worst gap "
                  "= the longest wait between two chunks of one stream):", ""] + _sweep_lines(phases)
    for name in ("parity", "precision"):
        if phases.get(name, {}).get("status") == "ok":
            lines += ["", _agreement_line(name, phases[name])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same phases on CPU: tiny preset, tiny sweeps")
    ap.add_argument("--budget-s", type=float, default=450, help="seconds this script may take")
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    plan = "dry-run" if args.cpu_dry_run else "gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="csm-gpu-check-"))
    cache = Path(os.environ.get("CSM_GPU_CHECK_CACHE", work / "compile-cache"))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton"),
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}
    result = {"plan": plan, "budget_s": args.budget_s, "compile_cache": str(cache), "phases": {}}
    for name, limit in limits(args.cpu_dry_run).items():
        left = deadline - time.monotonic() - RESERVE_S - GRACE_S
        if args.cpu_dry_run and name in REFUSED_ON_CPU:
            result["phases"][name] = {"status": "refused", "reason": REFUSED_ON_CPU[name]}
        elif left < min(MIN_S, limit):
            result["phases"][name] = {"status": "skipped", "reason": f"{max(left, 0):.0f} s left of the budget"}
        else:
            limit = min(limit, left)
            budget_left = deadline - time.monotonic()
            print(f"== {name} (limit {limit:.0f} s, {budget_left:.0f} s of the budget left)", flush=True)
            result["phases"][name] = entry = run_phase(name, plan, limit, work, env)
            print(f"== {name}: {entry['status']} in {entry['seconds']:.0f} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
        (args.out / "gpu_check.md").write_text(summary(result))
    print(summary(result), flush=True)
    return 1 if any(p["status"] in ("failed", "timed out", "died") for p in result["phases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
