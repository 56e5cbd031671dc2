"""csm_core pieces: checkpoints and their errors, framing, text, sampling, the csm-codes CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from csm_core.checkpoint import CheckpointError, load_model, save_original
from csm_core.companions import companions_for
from csm_core.config import PRESETS, ModelConfig
from csm_core.framing import Segment, audio_frames, build_prompt, text_frames
from csm_core.generate import generate
from csm_core.sampling import BatchSampler, SamplingParams, frame_noise, seed_key
from csm_core.text import build_offline_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_presets_have_real_codebooks_and_mimi_vocab():
    for cfg in PRESETS.values():
        assert cfg.audio_num_codebooks == 32 and cfg.audio_vocab_size == 2051
    real = PRESETS["csm-1b"]
    assert (real.backbone.num_layers, real.backbone.embed_dim, real.backbone.head_dim) == (16, 2048, 64)
    assert (real.decoder.num_layers, real.decoder.embed_dim, real.decoder.head_dim) == (4, 1024, 128)


def test_real_config_json_has_exactly_the_original_keys():
    assert set(PRESETS["csm-1b"].to_json_dict()) == {
        "backbone_flavor", "decoder_flavor", "text_vocab_size", "audio_vocab_size", "audio_num_codebooks"}


@pytest.mark.parametrize("legacy", [False, True])
def test_original_layout_round_trip(tiny, tmp_path, legacy):
    save_original(tiny.model, tmp_path, legacy_ckpt=legacy)
    again = load_model(str(tmp_path))
    assert again.layout == "original" and again.preset == "tiny" and not again.random_weights
    for (k, a), b in zip(tiny.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_dtypes(tiny, tmp_path):
    save_original(tiny.model, tmp_path)
    for dtype, want in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        lm = load_model(str(tmp_path), dtype=dtype)
        assert lm.model.audio_head.dtype == want
        assert lm.model.backbone.rope.cis.dtype == torch.complex64


def test_missing_files_and_bad_tensors_are_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))
    save_original(tiny.model, tmp_path)
    state = {k: v.clone() for k, v in load_file(str(tmp_path / "model.safetensors")).items()}  # no mmap: rewritten below
    state["codebook0_head.weight"] = torch.zeros(2051, 7)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"codebook0_head.weight: expected shape \[2051, 64\].*found \[2051, 7\]"):
        load_model(str(tmp_path))
    del state["codebook0_head.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="codebook0_head.weight"):
        load_model(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_model("./no/such/dir")
    with pytest.raises(ValueError, match="unknown flavor"):
        ModelConfig.from_json_dict({"backbone_flavor": "llama-7B", "decoder_flavor": "llama-100M"})


def test_framing_matches_csm():
    tok = load_tokenizer(None)
    codes = torch.randint(1, 2048, (32, 5))
    p = build_prompt(tok, [Segment(1, "hi", codes)], 0, "yo")
    ids_ctx, ids_gen = tok.encode_turn(1, "hi"), tok.encode_turn(0, "yo")
    assert ids_ctx[0] == 128000 and ids_ctx[-1] == 128001
    assert len(p) == len(ids_ctx) + 5 + 1 + len(ids_gen)
    n = len(ids_ctx)
    assert p.tokens[:n, 32].tolist() == ids_ctx and p.mask[:n, 32].all() and not p.mask[:n, :32].any()
    assert torch.equal(p.tokens[n : n + 5, :32], codes.t())
    assert not p.tokens[n + 5].any() and p.mask[n + 5, :32].all() and not p.mask[n + 5, 32]  # EOS frame
    with pytest.raises(ValueError, match=r"\[32, frames\]"):
        audio_frames(torch.zeros(8, 3, dtype=torch.long))


def test_sampling_is_per_row_and_greedy_when_asked():
    logits = torch.randn(3, 2051)
    params = [SamplingParams(0.0, 50), SamplingParams(0.9, 1), SamplingParams(0.9, 5)]
    s = BatchSampler(params, "cpu")
    noise = frame_noise(torch.arange(3), torch.zeros(3, dtype=torch.long), s.max_k)  # [3, 32, 5]
    out = s.sample(logits, noise[:, 0])
    assert out[0] == logits[0].argmax() and out[1] == logits[1].argmax()
    assert out[2] in torch.topk(logits[2], 5).indices
    alone = BatchSampler([SamplingParams(0.9, 5)], "cpu").sample(logits[2:], noise[2:, 0, :5])
    assert alone[0] == out[2]
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(0.9, 0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(-1, 5)


def _splitmix_finaliser(x: int) -> int:
    """splitmix64's finaliser on Python ints (uint64), the reference for frame_noise's int64 tensors."""
    m = (1 << 64) - 1
    x &= m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_frame_noise_is_the_counter_hash_it_documents():
    """Value (codebook i, column j) of frame n of seed s: -log of the top 24 bits of
    mix(mix(mix(s) + n * golden) + (i * 4096 + j + 1) * golden), as uint64 arithmetic gives it
    (the tensors wrap and shift as int64: seeds past 2**63 included)."""
    golden, m = 0x9E3779B97F4A7C15, (1 << 64) - 1
    seeds, frames = [0, 7, 2**63 + 5, 2**64 - 1], [0, 3, 11, 2**20]
    noise = frame_noise(torch.tensor([seed_key(s) for s in seeds]), torch.tensor(frames), 6)
    assert noise.shape == (4, 32, 6) and noise.dtype == torch.float32
    for r, (s, n) in enumerate(zip(seeds, frames)):
        stream = _splitmix_finaliser((_splitmix_finaliser(s) + n * golden) & m)
        for i, j in ((0, 0), (5, 3), (31, 5)):
            x = _splitmix_finaliser((stream + (i * 4096 + j + 1) * golden) & m)
            want = -np.log(((x >> 40) + 0.5) / 2**24)
            assert noise[r, i, j].item() == pytest.approx(want, rel=1e-6), (r, i, j)
    with pytest.raises(ValueError, match="seed"):
        seed_key(2**64)


def test_frame_noise_rows_do_not_depend_on_their_batch_or_top_k():
    seeds, frames = torch.tensor([3, 4, 3]), torch.tensor([0, 0, 1])
    batch = frame_noise(seeds, frames, 50)
    for r in range(3):
        alone = frame_noise(seeds[r : r + 1], frames[r : r + 1], 7)
        assert torch.equal(alone[0], batch[r, :, :7])  # the same columns, whatever else is drawn
    assert not torch.equal(batch[0], batch[1]) and not torch.equal(batch[0], batch[2])  # seeds, frames differ


def test_frame_noise_is_exponential():
    """Exponential(1): mean and variance 1, P(X > x) = exp(-x), strictly positive and finite."""
    x = frame_noise(torch.arange(64), torch.arange(64), 2051).flatten().double()  # 4.2M draws
    assert bool(torch.isfinite(x).all()) and float(x.min()) > 0
    assert float(x.mean()) == pytest.approx(1.0, abs=0.003) and float(x.var()) == pytest.approx(1.0, abs=0.01)
    for t in (0.1, 1.0, 3.0, 8.0):
        assert float((x > t).double().mean()) == pytest.approx(np.exp(-t), rel=0.02, abs=2e-5), t


def test_generate_is_seeded_and_bounded(tiny):
    model = tiny.model
    model.setup_caches(1)
    model.set_exact(True)
    prompt = build_prompt(load_tokenizer(None), [], 0, "hello")
    a = generate(model, prompt, max_frames=4, seed=5)
    b = generate(model, prompt, max_frames=4, seed=5)
    c = generate(model, prompt, max_frames=4, seed=6)
    assert a.frames.shape == (4, 32) and a.finish_reason == "length"
    assert torch.equal(a.frames, b.frames) and not torch.equal(a.frames, c.frames)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(model, prompt, max_frames=10_000)


def test_csm_codes_cli_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_TORCH_COMPILE": "1"}
    out = tmp_path / "codes.json"
    r = subprocess.run([sys.executable, "-m", "csm_core.cli", "--model", "tiny", "--text", "Hi there",
                        "--max-frames", "3", "--seed", "1", "--out", str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["finish_reason"] in ("length", "eos") and len(data["frames"]) <= 3
    assert all(len(f) == 32 for f in data["frames"])
    t, m = text_frames([128000, 5, 6, 128001])
    save_file({"tokens": t, "mask": m}, str(tmp_path / "p.safetensors"))
    r = subprocess.run([sys.executable, "-m", "csm_core.cli", "--model", "tiny", "--prompt-frames",
                        str(tmp_path / "p.safetensors"), "--max-frames", "2", "--out", "-"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prompt_frames"] == 4
    r = subprocess.run([sys.executable, "-m", "csm_core.cli", "--model", "tiny", "--text", "x", "--top-k", "0",
                        "--out", "-"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "top_k" in r.stderr


def test_companions_of_a_model_source():
    preset = companions_for("tiny")
    assert (preset.tokenizer, preset.mimi, preset.watermark) == ("offline", "random", "random")
    real = companions_for("sesame/csm-1b")
    assert (real.tokenizer, real.mimi, real.watermark) == ("unsloth/Llama-3.2-1B", "kyutai/moshiko-pytorch-bf16",
                                                           "sony/silentcipher")
    assert companions_for("/models/csm", mimi="/w/mimi.safetensors").mimi == "/w/mimi.safetensors"


def test_csm_codes_gives_a_real_checkpoint_its_real_parts(tiny, tmp_path):
    """A real-layout checkpoint never gets the byte tokenizer or a random Mimi: with the hub
    unreachable, csm-codes fails and names the part and the flag for a local copy."""
    ckpt = save_original(tiny.model, tmp_path / "ckpt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_TORCH_COMPILE": "1"}

    def codes(*args):
        return subprocess.run([sys.executable, "-m", "csm_core.cli", "--model", str(ckpt), "--max-frames", "2",
                               "--out", "-", *args], env=env, capture_output=True, text=True)

    r = codes("--text", "Hi")
    assert r.returncode == 2 and "tokenizer from 'unsloth/Llama-3.2-1B'" in r.stderr and "--tokenizer" in r.stderr
    tokenizer = tmp_path / "tokenizer.json"
    build_offline_tokenizer().save(str(tokenizer))
    r = codes("--text", "Hi", "--tokenizer", str(tokenizer))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prompt_frames"] == len("[0]Hi") + 2  # the named tokenizer, one token per byte
    wav = tmp_path / "turn.wav"
    sf.write(str(wav), np.zeros(4800, np.float32), 24_000)
    r = codes("--text", "Hi", "--tokenizer", str(tokenizer), "--context", "1", "Before.", str(wav))
    assert r.returncode == 2 and "Mimi weights from 'kyutai/moshiko-pytorch-bf16'" in r.stderr
    assert "--mimi-weights" in r.stderr
