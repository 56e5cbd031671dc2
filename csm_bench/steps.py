"""The decode step alone, per batch bucket, against its roofline (csm_bench/roofline.py).

    rows = time_steps("csm-1b", "cuda", "bfloat16", max_slots=256, context=512)

Builds the engine's step (csm_core/step.py `DecodeStep`: graphs on CUDA, one bucket per batch size)
over random weights, puts every row at `context` keys (the cache's contents do not change the work)
and, for each bucket, runs `warmup` then `iters` full steps (backbone position + frame, as the engine
calls them, host-side input fills included). On CUDA the steps are timed with CUDA events (device
time, the host queueing ahead) and with the wall clock (a final sync); elsewhere the wall clock
only. Each row: the bucket, ms per step, and what that reaches against the roofline of `peak`.
"""

from __future__ import annotations

import time

import torch

from csm_bench.roofline import Peak, achieved, step_cost
from csm_core.checkpoint import load_model
from csm_core.constants import NUM_CODEBOOKS
from csm_core.sampling import SamplingParams
from csm_core.step import DecodeStep, batch_buckets

SAMPLING = SamplingParams(temperature=0.9, top_k=50)  # the default request's


def _bytes_per(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@torch.inference_mode()
def time_steps(preset: str, device: str, dtype: str, max_slots: int, context: int = 512, *,
               buckets: list[int] | None = None, iters: int = 10, warmup: int = 3, max_seq: int | None = None,
               peak: Peak | None = None, say=lambda msg: None) -> dict:
    loaded = load_model(preset, device, dtype)
    model = loaded.model
    dev = model.audio_head.device
    cuda = dev.type == "cuda"
    max_seq = max_seq or loaded.config.backbone.max_seq_len
    if context >= max_seq:
        raise ValueError(f"context {context} must be below max_seq {max_seq}")
    t0 = time.perf_counter()
    step = DecodeStep(model, max_slots, max_seq, graphs=True)
    capture_s = time.perf_counter() - t0
    say(f"steps: {max_slots} slots captured in {capture_s:.1f} s")
    elt = _bytes_per(model.audio_head.dtype)
    rows = []
    for b in buckets or batch_buckets(max_slots):
        slots, positions = list(range(b)), [context - 1] * b  # each row sees `context` keys
        frames = torch.zeros(b, NUM_CODEBOOKS, dtype=torch.long, device=dev)
        sampling = [SAMPLING] * b
        noise = torch.ones(b, NUM_CODEBOOKS, SAMPLING.effective_top_k, device=dev)

        def one() -> None:
            h = step.backbone(slots, frames, positions)
            step.frames(h, sampling, noise)

        for _ in range(warmup):
            one()
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t = time.perf_counter()
        for _ in range(iters):
            one()
        if cuda:
            end.record()
            torch.cuda.synchronize()
        wall_s = (time.perf_counter() - t) / iters
        device_s = start.elapsed_time(end) / 1e3 / iters if cuda else wall_s
        cost = step_cost(loaded.config, b, context, weight_elt=elt, kv_elt=elt, act_elt=elt)
        row = {"batch": b, "wall_ms": round(wall_s * 1e3, 4), **achieved(cost, device_s, peak),
               "bytes": cost.bytes, "weight_bytes": cost.weight_bytes, "kv_bytes": cost.kv_bytes, "flops": cost.flops}
        rows.append(row)
        say(f"steps: batch {b}: {row['ms']:.3f} ms ({row['wall_ms']:.3f} wall), {row['gb_s']} GB/s, "
            f"{row['tflop_s']} TFLOP/s" + (f", {row['of_roofline']:.0%} of the roofline" if peak else ""))
    return {"preset": preset, "device": str(dev), "dtype": str(model.audio_head.dtype).replace("torch.", ""),
            "max_slots": max_slots, "max_seq": max_seq, "context": context, "iters": iters,
            "graphs": cuda, "capture_s": round(capture_s, 2), "timer": "cuda events" if cuda else "wall clock",
            "peak": None if peak is None else vars(peak), "rows": rows}
