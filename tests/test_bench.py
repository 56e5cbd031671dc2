"""csm-bench on the tiny preset: the JSON it writes has the promised shape and sane numbers."""

import json

import pytest

from csm_core.constants import FRAME_MS, FRAME_SAMPLES
from csm_bench.cli import main

FRAME_S = FRAME_MS / 1000


def bench(tmp_path, *flags):
    out = tmp_path / "out.json"
    assert main(["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--json", str(out),
                 *flags]) == 0
    return json.loads(out.read_text())


def check_common(run, n_requests, max_audio_ms):
    assert run["requests"] == n_requests == len(run["per_request"])
    frames = [r["frames"] for r in run["per_request"]]
    assert all(1 <= f <= max_audio_ms // FRAME_MS for f in frames)
    assert all(r["samples"] == r["frames"] * FRAME_SAMPLES for r in run["per_request"])
    assert run["frames"] == sum(frames)
    assert run["audio_s"] == pytest.approx(sum(frames) * FRAME_S, abs=1e-6)
    assert run["wall_s"] > 0
    assert run["throughput_audio_s_per_s"] == pytest.approx(run["audio_s"] / run["wall_s"], rel=1e-2)
    assert run["frames_per_s"] == pytest.approx(run["frames"] / run["wall_s"], rel=1e-2)
    assert 0 < run["ttfa_ms"]["p50"] <= run["ttfa_ms"]["p95"]
    assert all(v >= 0 for v in run["breakdown_ms"].values())


def check_engine(run):
    for key in ("gap_ms", "chunk_gap_ms"):
        gap = run[key]
        assert 0 < gap["p50"] <= gap["p95"] <= gap["max"]
    assert run["gap_ms"]["max"] <= run["chunk_gap_ms"]["max"]
    worst = run["worst_gap_ms"]  # playback continuity per stream (csm_core/continuity.py)
    assert 0 <= worst["p50"] <= worst["p95"] <= worst["p99"] <= worst["max"] and 0 <= worst["no_gap_share"] <= 1
    assert set(run["breakdown_ms"]) == {"backbone", "depth", "mimi", "mimi_busy", "watermark", "other"}
    assert run["breakdown_ms"]["mimi_busy"] > 0 and 1 <= run["mimi_frames_per_call"] <= 4
    assert run["step_ms"] > 0 and run["steps"] >= max(r["frames"] for r in run["per_request"])
    assert 0 < run["mean_batch"] <= run["concurrency"]
    assert 0 <= run["other_frac"] < 1
    model_ms = sum(run["breakdown_ms"][k] for k in ("backbone", "depth", "mimi", "other"))
    assert model_ms == pytest.approx(run["step_ms"], rel=1e-2, abs=0.01)


def test_reference_and_engine_without_watermark(tmp_path):
    report = bench(tmp_path, "--concurrency", "1,2", "--requests", "2", "--max-audio-ms", "400", "--watermark", "off")
    assert report["preset"] == "tiny" and report["device"] == "cpu"
    runs = report["runs"]
    assert [(r["mode"], r["concurrency"], r["watermark"]) for r in runs] == [
        ("reference", 1, False), ("engine", 1, False), ("engine", 2, False)]
    for run in runs:
        check_common(run, 2, 400)
    ref, *engine = runs
    assert ref["gap_ms"] is None and ref["worst_gap_ms"] is None
    assert set(ref["breakdown_ms"]) >= {"generate", "mimi", "watermark"}
    for run in engine:
        check_engine(run)
        assert run["frames"] == ref["frames"]  # same seeds, same streams
    # concurrency 2 batches the two requests: fewer steps than frames
    assert engine[1]["steps"] < engine[1]["frames"] and engine[1]["mean_batch"] > 1


def test_watermark_on(tmp_path):
    report = bench(tmp_path, "--concurrency", "1", "--requests", "1", "--max-audio-ms", "400", "--watermark", "on")
    ref, engine = report["runs"]
    assert (ref["mode"], ref["watermark"], engine["mode"], engine["watermark"]) == ("reference", True, "engine", True)
    check_common(ref, 1, 400)
    check_common(engine, 1, 400)
    check_engine(engine)
    assert ref["breakdown_ms"]["watermark"] > 0 and engine["breakdown_ms"]["watermark"] > 0
    # the first chunk is 3 frames, the rest flushed at the end: per-frame gaps are below chunk gaps
    assert engine["gap_ms"]["max"] <= engine["chunk_gap_ms"]["max"]


def test_prefill_interference(tmp_path):
    report = bench(tmp_path, "--modes", "engine", "--concurrency", "8", "--requests", "1", "--max-audio-ms", "240",
                   "--watermark", "off", "--prefill-interference", "--interference-context-s", "3")
    engine, run = report["runs"]
    assert engine["mode"] == "engine"
    assert (run["mode"], run["concurrency"], run["watermark"], run["requests"]) == (
        "engine-prefill-interference", 8, False, 8)
    *running, injected = run["per_request"]
    assert [r["finish"] for r in running] == ["cancelled"] * 7  # stopped once the measurement was done
    assert injected["finish"] == "length" and injected["frames"] == 10
    assert all(r["samples"] == r["frames"] * FRAME_SAMPLES for r in run["per_request"])
    check_engine(run)
    i = run["interference"]
    assert i["running_streams"] == 7 and i["context_s"] == 3
    assert i["prompt_positions"] > 3 * 1000 // FRAME_MS  # 38 context frames, their end frame and the texts
    assert i["prefill_tokens"] == i["prompt_positions"] and i["prefill_steps"] >= 1
    assert i["baseline_step_ms"] > 0 and i["gap_p95_over_baseline_step"] > 0
    for key in ("baseline_gap_ms", "gap_ms_during_prefill", "gap_ms_during_encode"):
        assert 0 < i[key]["p50"] <= i[key]["p95"] <= i[key]["max"]
    assert 0 < i["encode_ms"] < i["injected_ttfa_ms"] and i["encode_gap_p95_over_baseline_step"] > 0
    assert run["gap_ms"] == i["gap_ms_during_prefill"]


def test_watermark_roofline(tmp_path):
    """Counts silentcipher's MACs as apply_batch runs them and sets them against a measured GEMM."""
    from csm_bench import watermark_roofline

    out = tmp_path / "wm.json"
    assert watermark_roofline.main(["--threads", "1", "--streams", "2", "--chunk-frames", "3", "--iters", "1",
                                    "--gemm", "256", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    # per STFT cell: encoder 2 x 9 x (1x32 + 32x32 + 32x32), carrier decoder 2 x 9 x (34x96 + 2 x 96x96) + 2 x 96
    assert watermark_roofline.conv_macs_per_cell(watermark_roofline.Watermarker.load(None)) == 37_440 + 390_720
    assert r["conv_gmac_per_audio_s"] > 0 and r["gemm_gmac_s"] > 0 and r["ceiling_audio_s_per_s"] > 0
    assert r["core_s_per_audio_s"] == pytest.approx(r["machine_s_per_audio_s"], rel=0.01)
