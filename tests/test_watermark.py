"""silentcipher wrapper on random weights (no checkpoint, no network), CPU."""

from __future__ import annotations

import time

import pytest
import torch

from csm_core.constants import SAMPLE_RATE
from csm_core.watermark import CHECKPOINT_FILES, WatermarkCheck, Watermarker


@pytest.fixture(scope="module")
def marker() -> Watermarker:
    return Watermarker.load(None)


def _speechlike(seed: int, samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SAMPLE_RATE
    tone = 0.2 * torch.sin(2 * torch.pi * (150 + 40 * seed) * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
    return tone + 0.02 * torch.randn(samples, generator=generator)  # float32 [samples]


@pytest.mark.parametrize("samples", [1, 333, 4801, 12_345])
def test_output_length_equals_input_length(marker: Watermarker, samples: int) -> None:
    pcm = _speechlike(1, samples)
    out = marker.apply(pcm)
    assert out.shape == pcm.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_watermark_changes_audio_slightly(marker: Watermarker) -> None:
    pcm = _speechlike(2, 9_600)
    out = marker.apply(pcm)
    noise = (out - pcm).pow(2).mean()
    assert noise > 0
    # Random weights still scale the message to -36 dB of the input (plus resampling error).
    assert 10 * torch.log10(pcm.pow(2).mean() / noise) > 20


def test_a_stream_does_not_depend_on_other_streams(marker: Watermarker) -> None:
    a, b = _speechlike(3, 7_000), 3 * _speechlike(4, 11_000)
    first = marker.apply(a)
    marker.apply(b)
    between = marker.apply(a)
    marker.apply(b[:5_000])
    assert torch.equal(first, between)
    # A fresh watermarker (same fixed random weights) that never saw b agrees too.
    assert torch.equal(first, Watermarker.load("random").apply(a))


def test_silence_and_empty_come_back_unchanged(marker: Watermarker) -> None:
    for pcm in (torch.zeros(0), torch.zeros(4_000)):
        assert torch.equal(marker.apply(pcm), pcm)


def test_bad_input_is_rejected(marker: Watermarker) -> None:
    with pytest.raises(ValueError, match="one mono stream"):
        marker.apply(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="NaN"):
        marker.apply(torch.tensor([0.1, float("nan")]))


@pytest.mark.parametrize("key", [(1, 2, 3, 4), (1, 2, 3, 4, 256), (1, 2, 3, 4, -1), (1, 2, 3, 4, "5"), (1, 2, 3, 4, True)])
def test_bad_key_is_rejected(key) -> None:
    with pytest.raises(ValueError, match="5 integers in 0..255"):
        Watermarker.load(None, key=key)


def test_missing_checkpoint_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="enc_c.ckpt, dec_c.ckpt, dec_m_0.ckpt"):
        Watermarker.load(str(tmp_path / "nowhere"))
    (tmp_path / "enc_c.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing in .*: dec_c.ckpt, dec_m_0.ckpt$"):
        Watermarker.load(str(tmp_path))


def test_checkpoint_dir_loads_through_silentcipher(marker: Watermarker, tmp_path) -> None:
    model = marker.model
    for name, module in zip(CHECKPOINT_FILES, (model.enc_c, model.dec_c, model.dec_m[0])):
        torch.save(module.state_dict(), tmp_path / name)
    loaded = Watermarker.load(str(tmp_path), key=(1, 2, 3, 4, 5))  # no hparams.yaml: the shipped one
    assert loaded.key == (1, 2, 3, 4, 5)
    pcm = _speechlike(5, 3_000)
    assert torch.equal(loaded.apply(pcm), Watermarker.load(None, key=(1, 2, 3, 4, 5)).apply(pcm))


def test_verify_runs(marker: Watermarker) -> None:
    marked = marker.apply(_speechlike(6, 24_000))
    # Random weights carry no real message, so whether it is "detected" means nothing here;
    # only the call and the result's shape are checked. Phase-shift search is skipped: it
    # tries 205 alignments and takes minutes on CPU.
    check = marker.verify(marked, phase_shift_decoding=False)
    assert isinstance(check, WatermarkCheck)
    assert check.key is None or (len(check.key) == 5 and 0 <= check.confidence <= 1)
    assert marker.verify(torch.zeros(100)) == WatermarkCheck(detected=False, key=None, confidence=None)


def test_cost_per_second_of_audio(marker: Watermarker) -> None:
    pcm = _speechlike(7, SAMPLE_RATE)
    start = time.perf_counter()
    marker.apply(pcm)
    print(f"watermark: {1000 * (time.perf_counter() - start):.0f} ms per 1 s of audio")


def test_replica_watermarks_in_parallel_like_the_original(marker: Watermarker) -> None:
    """A replica has its own model copy and STFT (silentcipher's is a process-wide singleton
    with per-call state): two threads watermarking different lengths at once give exactly
    what one thread gives, one call after the other."""
    from concurrent.futures import ThreadPoolExecutor

    replica = marker.replica()
    assert replica.model.stft is not marker.model.stft and replica.model.enc_c is not marker.model.enc_c
    a, b = _speechlike(5, 24_000), _speechlike(6, 7_680)
    # results depend on the intra-op thread count (reduction order): the same on every thread here
    with ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        want_a = pool.submit(marker.apply, a).result()
        want_b = pool.submit(marker.apply, b).result()
        for _ in range(3):
            got_a, got_b = pool.submit(marker.apply, a), pool.submit(replica.apply, b)
            assert torch.equal(got_a.result(), want_a) and torch.equal(got_b.result(), want_b)
