"""The production CUDA path (bf16, CUDA graphs). Skipped on machines without CUDA."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_graphed_frame_sampler_matches_eager():
    from csm_core.checkpoint import load_model
    from csm_core.cuda_graphs import GraphedFrameSampler
    from csm_core.frame import sample_frames
    from csm_core.sampling import BatchSampler, SamplingParams, draw_frame_noise, make_generator

    model = load_model("tiny", device="cuda", dtype="float32").model
    model.setup_caches(8)
    graphed = GraphedFrameSampler(model, 8)
    for b in (1, 3, 8):
        h = torch.randn(b, model.config.backbone.embed_dim, device="cuda")
        params = [SamplingParams(0.9, k) for k in (1, 5, 50, 2051, 7, 9, 11, 13)[:b]]
        sampler = BatchSampler(params, "cuda")
        noise = sampler.stack_noise([draw_frame_noise(make_generator(i, "cuda"), "cuda", p.top_k) for i, p in enumerate(params)])
        want = sample_frames(model, h, sampler, noise)
        got = graphed(model, h, BatchSampler(params, "cuda"), noise)
        assert torch.equal(got, want)


def test_engine_bf16_on_cuda():
    from server.engine.config import EngineConfig
    from server.engine.engine import build
    from server.engine.types import Finished, FinishReason, SynthesisParams

    eng = build(EngineConfig(model="tiny", device="cuda", dtype="bfloat16", max_slots=4, watermark=False))
    eng.start()
    try:
        assert eng.wait_ready(300)
        streams = [eng.submit(SynthesisParams(text=f"hi {i}", seed=i, max_audio_ms=400)) for i in range(6)]
        for s in streams:
            fin = [ev for ev in s if isinstance(ev, Finished)][0]
            assert fin.reason in (FinishReason.LENGTH, FinishReason.EOS)
    finally:
        eng.shutdown()
