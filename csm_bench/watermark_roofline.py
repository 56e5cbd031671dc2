"""How far the CPU watermark is from this machine's limit, and the most it lets the server make.

    python -m csm_bench.watermark_roofline --threads 2 --streams 8 --json out.json

silentcipher's work is 3x3 gated convolutions over the 44.1 kHz STFT (2049 bins x ~23 frames per
second of audio), so its floor is its multiply-accumulates over the machine's fp32 GEMM rate.
This counts the MACs from the modules `Watermarker.apply_batch` runs (the carrier decoder's first
layer with its 32 + 32 copied channels folded: csm_core/watermark.py), measures a large fp32
matmul (the best a convolution can do here) and `apply_batch` on `--streams` chunks of the
engine's chunk length, and prints the watermark's core-seconds per audio second and the
throughput ceiling it sets on `--threads` cores even if the model cost nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from csm_core.constants import FRAME_SAMPLES, SAMPLE_RATE
from csm_core.watermark import WATERMARK_SAMPLE_RATE, Watermarker
from server.engine.config import EngineConfig


def conv_macs_per_cell(watermarker: Watermarker) -> int:
    """MACs per STFT cell (bin x frame) of one row: every Layer's conv and gate, as apply_batch runs them."""
    model = watermarker.model
    total = 0
    for layers, fold in ((model.enc_c.main, False), (model.dec_c.main, True)):
        for i, layer in enumerate(layers):
            if not hasattr(layer, "conv"):
                continue
            out_c, in_c, kh, kw = layer.conv.weight.shape
            if fold and i == 0:
                in_c -= 62  # 32 carrier and 32 message copies, one channel each
            total += 2 * out_c * in_c * kh * kw  # conv and gate
    return total


def stft_cells(watermarker: Watermarker, samples_24k: int) -> int:
    stft = watermarker.model.stft
    n = -(-samples_24k * WATERMARK_SAMPLE_RATE // SAMPLE_RATE)
    frames = (n + stft.win_len - n % stft.win_len) // stft.hop_len + 1
    return (stft.filter_length // 2 + 1) * frames


def timed(fn, iters: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def run(threads: int, streams: int, chunk_frames: int, iters: int, gemm: int) -> dict:
    torch.set_num_threads(threads)
    wm = Watermarker.load(None)
    a, b = torch.randn(gemm, gemm), torch.randn(gemm, gemm)
    gemm_macs_s = gemm**3 / timed(lambda: a @ b, iters)
    samples = chunk_frames * FRAME_SAMPLES
    g = torch.Generator().manual_seed(0)
    chunks = [0.1 * torch.randn(samples, generator=g) for _ in range(streams)]
    with torch.inference_mode():
        batch_s = timed(lambda: wm.apply_batch(chunks), iters)
    audio_s = streams * samples / SAMPLE_RATE
    macs = conv_macs_per_cell(wm) * stft_cells(wm, samples) * streams
    wall_per_audio_s = batch_s / audio_s  # seconds of the whole `threads`-core machine per audio second
    return {
        "threads": threads, "streams": streams, "chunk_frames": chunk_frames,
        "gemm_gmac_s": round(gemm_macs_s / 1e9, 2),
        "conv_gmac_per_audio_s": round(macs / audio_s / 1e9, 2),
        "apply_batch_s": round(batch_s, 3),
        "achieved_gmac_s": round(macs / batch_s / 1e9, 2),
        "share_of_gemm_peak": round(macs / batch_s / gemm_macs_s, 3),
        "machine_s_per_audio_s": round(wall_per_audio_s, 3),
        "core_s_per_audio_s": round(wall_per_audio_s * threads, 3),
        "ceiling_audio_s_per_s": round(1 / wall_per_audio_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m csm_bench.watermark_roofline", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--streams", type=int, default=8, help="chunks watermarked in one apply_batch")
    p.add_argument("--chunk-frames", type=int, default=EngineConfig().watermark_chunk_frames)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--gemm", type=int, default=4096, help="the side of the square fp32 matmul that measures the peak")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    result = run(args.threads, args.streams, args.chunk_frames, args.iters, args.gemm)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
