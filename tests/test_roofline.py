"""csm_bench/roofline.py: the decode step's bytes and FLOPs, against the model's real parameters and
against the arithmetic written out by hand for csm-1b (docs/benchmarks.md, the GPU section)."""

import pytest

from csm_bench.roofline import PEAKS, achieved, peak_for, step_cost, step_weights
from csm_core.config import PRESETS


def test_weights_read_per_step_match_the_model_parameters():
    from csm_core.checkpoint import random_model

    model = random_model(PRESETS["bench"])
    n = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # per step: the backbone stack once, codebook 0's head, 32 depth positions (projection + the
    # decoder stack), the 31 audio heads; embedding tables are only gathered
    want = (n(model.backbone.layers) + n(model.backbone.norm) + n(model.codebook0_head)
            + 32 * (n(model.projection) + n(model.decoder.layers) + n(model.decoder.norm)) + model.audio_head.numel())
    assert step_weights(PRESETS["bench"])[0] == want


def test_csm_1b_step_arithmetic():
    backbone_layer = 2048 * (32 + 2 * 8) * 64 + 2048 * 2048 + 3 * 2048 * 8192  # qkv, out, MLP
    decoder_layer = 1024 * (8 + 2 * 2) * 128 + 1024 * 1024 + 3 * 1024 * 8192
    matmul = 16 * backbone_layer + 32 * (2048 * 1024 + 4 * decoder_layer) + 2048 * 2051 + 31 * 1024 * 2051
    assert matmul == 4_666_264_576
    norms = (2 * 16 + 1) * 2048 + 32 * (2 * 4 + 1) * 1024
    assert step_weights(PRESETS["csm-1b"]) == (matmul + norms, matmul)

    one = step_cost(PRESETS["csm-1b"], batch=1, context=512)
    assert one.weight_bytes == 2 * (matmul + norms) == 9_333_254_144  # bf16: 9.33 GB a step
    kv = 512 * 16 * 2 * 8 * 64 * 2 + 528 * 4 * 2 * 2 * 128 * 2  # backbone 512 keys, depth 1+..+32
    assert one.kv_bytes == kv == 18_939_904
    assert one.other_bytes == (33 * 2048 + 31 * 1024) * 2 + 32 * 2051 * 12
    attention = 4 * (16 * 32 * 64 * 512 + 4 * 8 * 128 * 528)
    assert one.flops == 2 * matmul + attention

    # 513 keys take 5 blocks of 128: KV read grows by one block per layer
    assert step_cost(PRESETS["csm-1b"], 1, 513).kv_bytes - kv == 128 * 16 * 2 * 8 * 64 * 2
    many = step_cost(PRESETS["csm-1b"], batch=256, context=512)
    assert many.weight_bytes == one.weight_bytes and many.kv_bytes == 256 * kv and many.flops == 256 * one.flops


def test_roofline_on_the_h200():
    h200 = peak_for("NVIDIA H200")
    assert h200 is PEAKS["H200"] and peak_for("Intel Xeon") is None
    one = step_cost(PRESETS["csm-1b"], batch=1, context=512)
    at_one = achieved(one, one.bytes / h200.bytes_per_s, h200)  # a step at the memory roofline
    assert at_one["bound"] == "memory" and at_one["of_roofline"] == pytest.approx(1.0)
    assert at_one["roofline_ms"] == pytest.approx(1.95, abs=0.01)  # 9.37 GB / 4.8 TB/s
    assert at_one["gb_s"] == pytest.approx(4800, rel=1e-3)
    short = step_cost(PRESETS["csm-1b"], batch=256, context=128)  # 2.40 TFLOP: 2.42 ms at 989 TFLOP/s
    at_short = achieved(short, 0.010, h200)  # 10 ms for 256 frames of 80 ms each
    assert at_short["bound"] == "compute" and at_short["roofline_ms"] == pytest.approx(2.42, abs=0.01)
    assert at_short["audio_s_per_s"] == pytest.approx(256 * 0.08 / 0.010)
    assert at_short["of_roofline"] == pytest.approx(0.242, abs=1e-3)
    long = step_cost(PRESETS["csm-1b"], batch=256, context=512)  # + 4.85 GB of KV: memory-bound again
    assert achieved(long, 0.010, h200)["bound"] == "memory"
    assert long.bytes / 4.8e12 == pytest.approx(3.007e-3, rel=1e-3)
    assert "roofline_ms" not in achieved(one, 0.01, None)
