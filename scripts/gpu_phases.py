"""One phase of the GPU check, in a process of its own (scripts/gpu_check.py starts it):

    python scripts/gpu_phases.py NAME --plan gpu|dry-run --limit S --result R.json --traceback T.txt

A watchdog (faulthandler, a C thread: it needs no GIL) writes every thread's traceback to T.txt and
ends the process at S seconds; SIGTERM dumps them too. R.json gets {status, result | error,
environment, imported}; status "refused" for what the device cannot run (float8 below sm89).
Phases (PLANS gives the sizes):
- pytest: tests/test_cuda.py (graphed step = eager flex, flex = per-slot SDPA, fused prefill
  attention, quantized graphs, the engine in bf16).
- steps: csm_bench/steps.py: the decode step per batch bucket, CUDA events, against the roofline.
- sweep-off / sweep-on: csm-bench through the real engine, watermark off / on.
- parity: the engine on the device, fp32, against csm_core.generate on CPU fp32 (greedy frames, and
  the logits along the CPU's frames, teacher-forced). precision: bf16 against fp32.
- int8 / float8 / eager: csm-bench with --quantize int8-weight / float8, and graphs off.
Test hooks: CSM_GPU_CHECK_HANG=NAME[,NAME] makes those phases hang (the watchdog's test).
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.metadata
import json
import os
import signal
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # a checkout not installed (PYTHONPATH comes first)


@dataclass(frozen=True)
class Plan:
    device: str
    dtype: str  # steps and sweeps
    preset: str  # steps and sweeps
    slots: int
    context: int  # steps: keys each row attends over
    steps_buckets: tuple[int, ...] | None  # None: every bucket of `slots`
    steps_iters: int
    sweep_off: tuple[int, ...]
    sweep_on: tuple[int, ...]
    sweep_extra: tuple[int, ...]  # int8, float8, eager
    audio_ms: int
    parity_preset: str
    parity_requests: int
    parity_frames: int
    precision_preset: str
    precision_frames: int


PLANS = {
    "gpu": Plan("cuda", "bfloat16", "csm-1b", 256, 512, None, 20, (1, 64, 256), (1, 64), (64,), 2000,
                "bench", 2, 40, "csm-1b", 20),
    "dry-run": Plan("cpu", "float32", "tiny", 2, 100, (1, 2), 1, (1, 2), (2,), (2,), 240, "tiny", 1, 4, "tiny", 4),
}
SWEEPS = {  # name -> csm-bench flags
    "sweep-off": ["--cuda-graphs", "on", "--quantize", "none", "--watermark", "off"],
    "sweep-on": ["--cuda-graphs", "on", "--quantize", "none", "--watermark", "on"],
    "int8": ["--cuda-graphs", "on", "--quantize", "int8-weight", "--watermark", "off"],
    "float8": ["--cuda-graphs", "on", "--quantize", "float8", "--watermark", "off"],
    "eager": ["--cuda-graphs", "off", "--quantize", "none", "--watermark", "off"],
}
TEXTS = ("Hello there, thanks for calling.", "The weather tomorrow looks bright.",
         "Turn left at the second light.", "Please hold for a moment.")


class Refused(Exception):
    """The device cannot run this phase (recorded as "refused", not as a failure)."""


class PhaseFailed(Exception):
    """The phase ran and failed; its result still says how."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def phase_pytest(plan: Plan) -> dict:
    import pytest

    class Outcomes:
        def __init__(self):
            self.tests: dict[str, str] = {}
            self.failures: dict[str, str] = {}

        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                self.tests[report.nodeid] = report.outcome
                if report.failed:
                    self.failures[report.nodeid] = report.longreprtext[-1500:]

    outcomes = Outcomes()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_cuda.py"], plugins=[outcomes])
    counts = {k: sum(v == k for v in outcomes.tests.values()) for k in ("passed", "failed", "skipped")}
    result = {"rc": int(rc), **counts, "tests": outcomes.tests, "failures": outcomes.failures}
    if rc != 0:
        raise PhaseFailed(f"pytest exit {int(rc)}: {counts['failed']} failed", result)
    return result


def phase_steps(plan: Plan) -> dict:
    import torch

    from csm_bench.roofline import peak_for
    from csm_bench.steps import time_steps

    peak = peak_for(torch.cuda.get_device_name()) if plan.device == "cuda" else None
    return time_steps(plan.preset, plan.device, plan.dtype, plan.slots, plan.context,
                      buckets=list(plan.steps_buckets) if plan.steps_buckets else None, iters=plan.steps_iters,
                      warmup=3 if plan.device == "cuda" else 1, peak=peak, say=lambda m: print(m, flush=True))


def phase_sweep(plan: Plan, name: str) -> dict:
    from csm_bench import cli as bench

    flags = SWEEPS[name]
    concurrency = {"sweep-off": plan.sweep_off, "sweep-on": plan.sweep_on}.get(name, plan.sweep_extra)
    if name == "float8":  # torch alone: csm_core.quantize would import torchao to refuse
        import torch

        if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
            raise Refused("float8 needs a CUDA device of compute capability >= 8.9 (Ada, Hopper or newer)")
    path = Path(tempfile.mkdtemp()) / f"bench-{name}.json"
    argv = ["--preset", plan.preset, "--device", plan.device, "--dtype", plan.dtype, "--modes", "engine",
            "--max-slots", str(plan.slots), "--concurrency", ",".join(map(str, concurrency)), "--waves", "1",
            "--max-audio-ms", str(plan.audio_ms), "--json", str(path), *flags]
    if bench.main(argv) != 0:
        raise RuntimeError(f"csm-bench {' '.join(argv)} failed")
    return {"argv": argv, "report": json.loads(path.read_text())}


# -- parity and precision ---------------------------------------------------------------
def _greedy():
    from csm_core.sampling import SamplingParams

    return SamplingParams(temperature=0.0)


def frames_agreement(got, want) -> dict:
    """Two greedy frame sequences [n, 32]: equal, the frames before they part, codes equal overall."""
    n = min(len(got), len(want))
    same = (got[:n] == want[:n]).all(dim=1)
    first_diff = int((~same).nonzero()[0]) if not bool(same.all()) else n
    return {"equal": bool(len(got) == len(want) and same.all()), "frames": [len(got), len(want)],
            "frames_before_parting": first_diff,
            "codes_equal": round(float((got[:n] == want[:n]).float().mean()), 4) if n else None}


def logit_difference(got, want) -> dict:
    """[T, 32, vocab] each: the largest difference, also relative to the largest logit there."""
    diff = (got.float() - want.float()).abs().amax(-1)  # [T, 32]
    scale = want.float().abs().amax(-1)
    return {"max_abs": round(float(diff.max()), 6), "max_rel": round(float((diff / scale).max()), 6),
            "greedy_choices_equal": round(float((got.argmax(-1) == want.argmax(-1)).float().mean()), 4)}


def prompts(n: int) -> list:
    from csm_core.framing import build_prompt
    from csm_core.text import OFFLINE_TOKENIZER, load_tokenizer

    tokenizer = load_tokenizer(OFFLINE_TOKENIZER)
    return [build_prompt(tokenizer, [], i % 2, TEXTS[i % len(TEXTS)]) for i in range(n)]


def engine_greedy_frames(plan: Plan) -> list:
    """The engine's production path on plan.device, fp32: each request's greedy frames [f, 32]."""
    import torch

    from csm_core.constants import FRAME_MS
    from server.engine.config import EngineConfig
    from server.engine.engine import build
    from server.engine.types import Finished, SynthesisParams

    n = plan.parity_requests
    engine = build(EngineConfig(model=plan.parity_preset, device=plan.device, dtype="float32", max_slots=n,
                                watermark=False))
    got: dict = {}
    engine.add_frame_observer(lambda rid, codes: got.setdefault(rid, []).append(codes))
    engine.start()
    try:
        if not engine.wait_ready(300):
            raise RuntimeError("the engine did not get ready in 300 s")
        streams = [engine.submit(SynthesisParams(text=TEXTS[i % len(TEXTS)], speaker=i % 2, temperature=0.0, seed=i,
                                                 max_audio_ms=plan.parity_frames * FRAME_MS, request_id=f"parity-{i}"))
                   for i in range(n)]
        for s in streams:
            finished = [ev for ev in s if isinstance(ev, Finished)][0]
            if finished.error:
                raise RuntimeError(finished.error)
    finally:
        engine.shutdown()
    return [torch.stack(got[f"parity-{i}"]) for i in range(n)]


def flex_model(preset: str, device: str, dtype: str):
    from csm_core.checkpoint import load_model

    model = load_model(preset, device, dtype).model
    model.set_attention("flex")
    model.setup_caches(1)
    return model


def phase_parity(plan: Plan) -> dict:
    from csm_core.checkpoint import load_model
    from csm_core.generate import frame_logits, generate

    ps = prompts(plan.parity_requests)
    got = engine_greedy_frames(plan)
    model = flex_model(plan.parity_preset, plan.device, "float32")
    reference = load_model(plan.parity_preset).model  # csm_core.generate's path on CPU: fp32, exact
    reference.setup_caches(1)
    reference.set_exact(True)
    requests = []
    for prompt, frames in zip(ps, got):
        want = generate(reference, prompt, max_frames=plan.parity_frames, sampling=_greedy()).frames
        entry = frames_agreement(frames, want)
        entry["logits_along_cpu_frames"] = logit_difference(frame_logits(model, prompt, want),
                                                            frame_logits(reference, prompt, want))
        requests.append(entry)
    return {"preset": plan.parity_preset, "what": f"engine on {plan.device} fp32 vs csm_core.generate on cpu fp32",
            "requests_equal": sum(r["equal"] for r in requests), "requests": requests}


def phase_precision(plan: Plan) -> dict:
    from csm_core.generate import frame_logits, generate

    fp32 = flex_model(plan.precision_preset, plan.device, "float32")
    bf16 = flex_model(plan.precision_preset, plan.device, "bfloat16")
    requests = []
    for prompt in prompts(1):
        want = generate(fp32, prompt, max_frames=plan.precision_frames, sampling=_greedy()).frames
        got = generate(bf16, prompt, max_frames=plan.precision_frames, sampling=_greedy()).frames
        entry = frames_agreement(got, want)
        entry["logits_along_fp32_frames"] = logit_difference(frame_logits(bf16, prompt, want),
                                                             frame_logits(fp32, prompt, want))
        requests.append(entry)
    return {"preset": plan.precision_preset, "what": f"bf16 vs fp32 on {plan.device}, flex attention",
            "requests": requests}


def run_phase(name: str, plan: Plan) -> dict:
    if name == "pytest":
        return phase_pytest(plan)
    if name == "steps":
        return phase_steps(plan)
    if name in SWEEPS:
        return phase_sweep(plan, name)
    return phase_parity(plan) if name == "parity" else phase_precision(plan)


PHASES = ("pytest", "steps", "sweep-off", "sweep-on", "parity", "precision", "int8", "float8", "eager")


def environment() -> dict:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__}
    for dist in ("torchao", "moshi", "silentcipher", "triton"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = "missing"
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   sdpa={k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")()
                         for k in ("flash", "mem_efficient", "cudnn", "math")})
    return env


def imported_distributions() -> list[str]:
    """The installed distributions this process imported (stdlib and this checkout left out)."""
    by_module = importlib.metadata.packages_distributions()
    tops = {m.split(".")[0] for m in list(sys.modules)} - set(sys.stdlib_module_names)
    return sorted({d for t in tops for d in by_module.get(t, [])})


def hang() -> None:
    threading.Event().wait()  # the watchdog's test: never returns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", choices=PHASES)
    ap.add_argument("--plan", choices=tuple(PLANS), required=True)
    ap.add_argument("--limit", type=float, required=True, help="seconds: then tracebacks, and exit")
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--traceback", type=Path, required=True)
    args = ap.parse_args(argv)
    tb = open(args.traceback, "w")  # noqa: SIM115 (open until the process ends: the watchdog writes here)
    faulthandler.dump_traceback_later(args.limit, exit=True, file=tb)
    faulthandler.register(signal.SIGTERM, file=tb, all_threads=True, chain=True)
    plan = PLANS[args.plan]
    out: dict = {}
    try:
        if args.name in os.environ.get("CSM_GPU_CHECK_HANG", "").split(","):
            hang()
        out = {"status": "ok", "result": run_phase(args.name, plan)}
    except Refused as e:
        out = {"status": "refused", "reason": str(e)}
    except Exception as e:  # recorded; the next phase runs in a fresh process
        out = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        if isinstance(e, PhaseFailed):
            out["result"] = e.result
        traceback.print_exc()
    faulthandler.cancel_dump_traceback_later()
    out["environment"] = environment()
    out["imported"] = imported_distributions()
    args.result.write_text(json.dumps(out, indent=2, default=str))
    return 0 if out["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
