"""--quantize on CPU: int8 weight-only parity with fp32 on the bench preset, torch's own kernels only,
and float8's guard (its CUDA run is in tests/test_cuda.py)."""

import pytest
import torch

from csm_core.checkpoint import load_model
from csm_core.framing import Prompt
from csm_core.generate import frame_logits, generate
from csm_core.sampling import SamplingParams
from server.engine.config import EngineConfig

STEPS = 20
# Stated tolerance of int8 weight-only (one scale per output channel) against fp32, per frame
# position: the largest logit difference is at most 3 % of the largest fp32 logit (measured: 1.9 %).
LOGIT_TOLERANCE = 0.03
MIN_AGREEMENT = 0.95  # greedy choices equal to fp32's (measured: 98 % of 640)


def bench_prompt(n: int = 30) -> Prompt:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 2048, (n, 33), generator=g)
    tokens[:, 32] = torch.randint(0, 128_000, (n,), generator=g)
    mask = torch.zeros(n, 33, dtype=torch.bool)
    mask[:10, 32] = True
    mask[10:, :32] = True
    return Prompt(tokens, mask)


def test_int8_weight_only_matches_fp32_on_the_bench_preset():
    """Along fp32's greedy frames over 20 steps: logits within the stated tolerance, and int8 makes
    fp32's greedy choice wherever fp32's margin between its two best codes exceeds twice that
    position's logit error. (Free-running frames part ways at the first near-tie: random weights
    give flat logits, so one flip changes every later frame.)"""
    prompt = bench_prompt()
    fp32 = load_model("bench").model
    int8 = load_model("bench", quantize="int8-weight").model
    for m in (fp32, int8):
        m.setup_caches(1, 256)
        m.set_exact(True)
    frames = generate(fp32, prompt, max_frames=STEPS, sampling=SamplingParams(temperature=0.0)).frames
    assert frames.shape[0] == STEPS
    want = frame_logits(fp32, prompt, frames)  # [20, 32, vocab]
    got = frame_logits(int8, prompt, frames)
    error = (got - want).abs().amax(-1)  # [20, 32]
    assert (error <= LOGIT_TOLERANCE * want.abs().amax(-1)).all(), error.max()
    top2 = want.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    same = got.argmax(-1) == want.argmax(-1)
    assert (same | (margin < 2 * error)).all()
    assert same.float().mean() >= MIN_AGREEMENT


def test_quantized_weights_replace_the_fused_ones():
    model = load_model("tiny", quantize="int8-weight").model
    for stack in (model.backbone, model.decoder):
        for layer in stack.layers:
            attn, mlp = layer.attn, layer.mlp
            assert attn.q_proj is None and mlp.w1 is None and mlp.w3 is None  # the fused copy is the only one
            for w in (attn.wqkv, mlp.w13, attn.output_proj.weight, mlp.w2.weight):
                assert type(w).__name__ == "AffineQuantizedTensor" and w.tensor_impl.int_data.dtype == torch.int8


def test_int8_forward_dispatches_only_torch_operators(dispatched_ops):
    """torchao 0.14.1 loads no C++ extension on this torch: every kernel a quantized step runs is
    one of torch's own (aten), none of torchao's custom operators."""
    model = load_model("tiny", quantize="int8-weight").model
    model.setup_caches(1, 64)
    prompt = bench_prompt(12)
    with dispatched_ops() as ops:
        generate(model, prompt, max_frames=2, sampling=SamplingParams(temperature=0.0))
    assert ops and {op.namespace for op in ops} == {"aten"}, sorted(map(str, ops))
    assert torch.ops.aten.mm.default in ops


def test_float8_is_refused_off_capable_cuda():
    with pytest.raises(ValueError, match=r"compute capability >= 8\.9"):
        load_model("tiny", device="cpu", quantize="float8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        load_model("tiny", quantize="int4")
    with pytest.raises(ValueError, match="quantize must be one of"):
        EngineConfig(quantize="fp8")
