"""The production CUDA path: graphed decode step, compiled FlexAttention, fused prefill attention,
bf16, quantization. Skipped on machines without CUDA (scripts/gpu_check.sh runs it on a GPU)."""

import pytest
import torch

from csm_core.checkpoint import load_model
from csm_core.frame import sample_frames
from csm_core.sampling import BatchSampler, SamplingParams, frame_noise
from csm_core.step import DecodeStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MAX_SEQ = 512
# Every step here has 5 cache rows (a graphed step of 4 slots adds its scratch row): FlexAttention's
# kernel is compiled once per cache shape and dtype, so the file compiles it twice (fp32, bf16), and
# scripts/gpu_check.sh's shared cache directory serves the later phases' compiles of the same shapes.
SLOTS = 4
ROWS = SLOTS + 1
# SDPA's fused kernels: which one a prefill chunk gets depends on torch and cuDNN (torch 2.11 with
# cuDNN 9.19 prefers cuDNN attention on sm90); what must not run is the math fallback, which
# materialises every score.
FUSED_SDPA = {"aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_cudnn_attention",
              "aten::_scaled_dot_product_efficient_attention", "aten::_efficient_attention_forward",
              "aten::_flash_attention_forward"}


def prefilled(model, lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Prefill slot i with lengths[i] random audio positions; their last hidden states [1, dim]."""
    g = torch.Generator().manual_seed(seed)
    hs = []
    for slot, n in enumerate(lengths):
        tokens = torch.randint(0, 2048, (n, 33), generator=g).cuda()
        mask = torch.ones(n, 33, dtype=torch.bool, device="cuda")
        mask[:, 32] = False
        hs.append(model.prefill(slot, tokens, mask, 0))
    return hs


def decode_frames(step: DecodeStep, model, lengths: list[int], params: list[SamplingParams], frames: int):
    hs = prefilled(model, lengths)
    out, h = [], torch.cat(hs)
    for t in range(frames):
        seeds = torch.arange(len(lengths), device="cuda")
        noise = frame_noise(seeds, torch.full_like(seeds, t), max(p.effective_top_k for p in params))
        codes = step.frames(h, params, noise)
        out.append(codes)
        h = step.backbone(list(range(len(lengths))), codes, [n + t for n in lengths])
    return torch.stack(out)


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_graphed_step_matches_eager_flex(greedy):
    lengths = [5, 130, 64]
    params = [SamplingParams(0.0 if greedy else 0.9, k) for k in (1, 50, 2051)]
    want_model = load_model("tiny", device="cuda", dtype="float32").model
    want = decode_frames(DecodeStep(want_model, ROWS, MAX_SEQ, graphs=False), want_model, lengths, params, 6)
    model = load_model("tiny", device="cuda", dtype="float32").model
    got = decode_frames(DecodeStep(model, SLOTS, MAX_SEQ, graphs=True), model, lengths, params, 6)
    assert torch.equal(got, want)


def test_flex_decode_matches_per_slot_attention():
    """Compiled FlexAttention over the live blocks equals one SDPA call per slot (fp32)."""
    model = load_model("tiny", device="cuda", dtype="float32").model
    rows = DecodeStep(model, ROWS, MAX_SEQ, attention="rows")
    lengths = [3, 129, 300]
    h_rows = torch.cat(prefilled(model, lengths))
    codes = torch.randint(0, 2048, (3, 32), device="cuda")
    want = rows.backbone([0, 1, 2], codes, lengths)
    flex = DecodeStep(model, ROWS, MAX_SEQ, attention="flex")
    torch.testing.assert_close(torch.cat(prefilled(model, lengths)), h_rows)  # flash prefill vs masked SDPA
    torch.testing.assert_close(flex.backbone([0, 1, 2], codes, lengths), want)


def test_attention_kernels_are_fused():
    """bf16: prefill chunks run one of SDPA's fused kernels (bottom-right causal, GQA: flash, cuDNN or
    memory-efficient, never the math fallback) and agree with the masked per-slot call; decode runs
    the compiled flex kernel, with no per-step copy of cache rows (no index_select) and no
    full-score softmax."""
    model = load_model("tiny", device="cuda", dtype="bfloat16").model
    DecodeStep(model, ROWS, MAX_SEQ, attention="rows")
    want = torch.cat(prefilled(model, [100, 37]))
    step = DecodeStep(model, ROWS, MAX_SEQ)
    codes = torch.randint(0, 2048, (2, 32), device="cuda")
    step.backbone([0, 1], codes, [70, 9])  # compile outside the profile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = torch.cat(prefilled(model, [100, 37]))
        step.backbone([0, 1], codes, [100, 37])
    names = {e.name for e in prof.events()}
    print("fused SDPA kernels in the prefill:", sorted(names & FUSED_SDPA))  # in gpu_check's log
    assert names & FUSED_SDPA, sorted(n for n in names if "attention" in n)
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert "aten::index_select" not in names and "aten::_softmax" not in names
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)  # bf16 rounding, two kernels


@pytest.mark.parametrize("mode", ["int8-weight", "float8"])
def test_quantized_model_runs_torch_kernels_and_graphs(mode, dispatched_ops):
    if mode == "float8" and torch.cuda.get_device_capability() < (8, 9):
        with pytest.raises(ValueError, match="8.9"):
            load_model("tiny", device="cuda", dtype="bfloat16", quantize=mode)
        return
    model = load_model("tiny", device="cuda", dtype="bfloat16", quantize=mode).model
    step = DecodeStep(model, SLOTS, MAX_SEQ, graphs=True)
    params = [SamplingParams(0.9, 50)] * 2
    with dispatched_ops() as ops:  # every quantized linear, outside the compiled attention
        h = torch.cat(prefilled(model, [20, 40]))
        sample_frames(model, h, BatchSampler(params, "cuda"), torch.ones(2, 32, 50, device="cuda"))
    assert {op.namespace for op in ops} <= {"aten", "prims"}, ops
    frames = decode_frames(step, model, [20, 40], params, 3)
    assert frames.shape == (3, 2, 32) and int(frames.max()) < 2051


def test_engine_bf16_on_cuda():
    from server.engine.config import EngineConfig
    from server.engine.engine import build
    from server.engine.types import Finished, FinishReason, SynthesisParams

    eng = build(EngineConfig(model="tiny", device="cuda", dtype="bfloat16", max_slots=SLOTS, watermark=False))
    eng.start()
    try:
        assert eng.wait_ready(300)
        streams = [eng.submit(SynthesisParams(text=f"hi {i}", seed=i, max_audio_ms=400)) for i in range(6)]
        for s in streams:
            fin = [ev for ev in s if isinstance(ev, Finished)][0]
            assert fin.reason in (FinishReason.LENGTH, FinishReason.EOS)
    finally:
        eng.shutdown()


def test_mimi_stream_decoder_on_cuda_runs_only_the_live_rows():
    """moshi's exec-mask update is a CUDA graph captured on the full state; a call narrowed to the
    live rows sets the mask there first and decodes only its rows, as a full-width call would."""
    from csm_core.constants import NUM_CODEBOOKS
    from csm_core.mimi import MimiCodec

    codec = MimiCodec.load(None, device="cuda")
    codes = torch.randint(0, 2048, (4, NUM_CODEBOOKS, 3), generator=torch.Generator().manual_seed(3)).cuda()
    narrow, full = codec.stream_decoder(4), codec.stream_decoder(4)
    for t, live in enumerate((1, 2, 1)):  # rows 0..live-1 active at frame t
        active = torch.arange(4, device="cuda") < live
        a = narrow.decode(codes[:, :, t : t + 1], active, live)[:live]
        b = full.decode(codes[:, :, t : t + 1], active, 4)[:live]
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
