"""Mimi wrapper on random weights (real architecture), CPU fp32."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from csm_core.constants import FRAME_SAMPLES, NUM_CODEBOOKS
from csm_core.mimi import GemmConvTranspose1d, MimiCodec, MimiStreamDecoder

# Batched and single-row calls run the same math with different GEMM shapes, so fp32 sums are
# ordered differently: streams agree to ~1e-7 (outputs are ~0.1), not bit for bit.
ATOL = 1e-5


@pytest.fixture(scope="module")
def codec() -> MimiCodec:
    return MimiCodec.load(None)


def _codes(seed: int, frames: int, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (batch, NUM_CODEBOOKS, frames), generator=generator)  # [B, 32, T]


def _solo(codec: MimiCodec, codes: torch.Tensor, frames_per_call: int | None = None) -> torch.Tensor:
    """One stream [32, T] through a stream decoder of its own (default: all frames in one call)."""
    frames_per_call = frames_per_call or codes.shape[-1]
    decoder = codec.stream_decoder(1)
    pieces = [
        decoder.decode(codes[None, :, i : i + frames_per_call], torch.tensor([True]))[0]
        for i in range(0, codes.shape[-1], frames_per_call)
    ]
    decoder.close()
    return torch.cat(pieces)


def test_random_load_is_deterministic_and_leaves_global_rng_alone(codec: MimiCodec) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = MimiCodec.load("random")
    assert torch.equal(torch.rand(3), expected)
    for (name, a), (_, b) in zip(codec.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert codec.model.num_codebooks == NUM_CODEBOOKS
    assert not codec.model.training


def test_missing_weights_name_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        MimiCodec.load(str(tmp_path / "nothing.safetensors"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        MimiCodec.load(str(tmp_path))


def test_encode_shapes_and_batched_equals_single(codec: MimiCodec) -> None:
    generator = torch.Generator().manual_seed(7)
    lengths = [3 * FRAME_SAMPLES + 100, 5 * FRAME_SAMPLES, 700]
    waves = [0.1 * torch.randn(n, generator=generator) for n in lengths]
    batched = codec.encode(waves)
    for wave, codes in zip(waves, batched):
        assert codes.dtype == torch.long
        assert codes.shape == (NUM_CODEBOOKS, math.ceil(wave.numel() / FRAME_SAMPLES))
        # Mimi's encoder is causal: the zeros padding a shorter wave never reach its frames,
        # so batching gives the same codes as encoding alone (observed: identical).
        assert torch.equal(codes, codec.encode([wave])[0])
    assert len(torch.unique(batched[1][NUM_CODEBOOKS - 1])) > 1, "codes do not depend on the audio"


def test_encode_rejects_empty_and_multichannel(codec: MimiCodec) -> None:
    with pytest.raises(ValueError, match="non-empty mono"):
        codec.encode([torch.zeros(0)])
    with pytest.raises(ValueError, match="non-empty mono"):
        codec.encode([torch.zeros(2, 1920)])


def test_decode_shape_and_matches_streaming(codec: MimiCodec) -> None:
    codes = _codes(1, 4, batch=2)
    waves = codec.decode(codes)
    assert waves.shape == (2, 4 * FRAME_SAMPLES)
    torch.testing.assert_close(waves[1], _solo(codec, codes[1], 1), atol=ATOL, rtol=0)


def test_one_or_two_frames_per_call_agree(codec: MimiCodec) -> None:
    codes = _codes(2, 4)[0]
    torch.testing.assert_close(_solo(codec, codes, 1), _solo(codec, codes, 2), atol=ATOL, rtol=0)


def test_batched_streams_with_resets_and_idle_rows_equal_each_stream_alone(codec: MimiCodec) -> None:
    steps = 6
    # What each slot does at each step: a stream name (that stream's next frame) or None (idle).
    schedule = {
        0: ["a"] * 6,
        1: ["b", "b", "b", "c", "c", "c"],  # a new request takes slot 1 at step 3
        2: ["d", "d", None, "d", None, "d"],  # slot 2 produced no frame at steps 2 and 4
        3: [None, None, "e", "e", "e", "e"],  # free until step 2
    }
    starts = {0: [0, 1, 2], 2: [3], 3: [1]}  # step -> slots a new request takes
    streams = {name: _codes(10 + i, 6)[0] for i, name in enumerate("abcde")}  # [32, 6] each
    used = {name: 0 for name in streams}
    out: dict[str, list[torch.Tensor]] = {name: [] for name in streams}
    junk = _codes(99, steps, batch=4)

    decoder = codec.stream_decoder(4)
    for step in range(steps):
        names = [schedule[slot][step] for slot in range(4)]
        decoder.reset(starts.get(step, []))
        codes = junk[:, :, step : step + 1].clone()  # [4, 32, 1]; idle rows decode junk
        for slot, name in enumerate(names):
            if name:
                codes[slot, :, 0] = streams[name][:, used[name]]
                used[name] += 1
        active = torch.tensor([name is not None for name in names])
        wave = decoder.decode(codes, active)
        assert wave.shape == (4, FRAME_SAMPLES)
        for slot, name in enumerate(names):
            if name:
                out[name].append(wave[slot])
    decoder.close()

    for name, pieces in out.items():
        alone = _solo(codec, streams[name][:, : used[name]])
        torch.testing.assert_close(torch.cat(pieces), alone, atol=ATOL, rtol=0, msg=f"stream {name}")

    # The comparison is not vacuous: without the reset, stream c would sound different.
    continued = _solo(codec, torch.cat([streams["b"][:, :3], streams["c"][:, :3]], dim=1))
    assert (continued[3 * FRAME_SAMPLES :] - torch.cat(out["c"])).abs().max() > 100 * ATOL


def _row_state(decoder: MimiStreamDecoder, row: int) -> list[torch.Tensor]:
    """Every streaming-state tensor of one batch row (exec masks aside: they are inputs)."""
    tensors = []
    for module in decoder._streaming:
        for state in module.get_streaming_state().values():
            for field, value in vars(state).items():
                if field == "exec_mask":
                    continue
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == decoder.batch_size:
                    tensors.append(value[row].clone())
                elif hasattr(value, "end_offset"):  # moshi's RingKVCache
                    tensors.append(value.cache[:, row].clone())
                    tensors.append(value.end_offset[row].clone())
    return tensors


def test_idle_row_state_is_bitwise_unchanged(codec: MimiCodec) -> None:
    decoder = codec.stream_decoder(2)
    both = torch.tensor([True, True])
    for step in range(3):
        decoder.decode(_codes(20 + step, 2, batch=2), both)
    before = _row_state(decoder, 1)
    assert before
    # moshi writes masked rows' keys/values into the ring cache; the decoder puts them back.
    decoder.decode(_codes(30, 3, batch=2), torch.tensor([True, False]))
    after = _row_state(decoder, 1)
    decoder.close()
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_stream_decoder_leaves_the_codec_usable(codec: MimiCodec) -> None:
    codes = _codes(3, 2)
    expected = codec.decode(codes)
    decoder = codec.stream_decoder(1)
    decoder.decode(codes, torch.tensor([True]))
    assert torch.equal(codec.decode(codes), expected)
    assert codec.encode([torch.zeros(FRAME_SAMPLES)])[0].shape == (NUM_CODEBOOKS, 1)
    decoder.close()


def test_bad_shapes_are_rejected(codec: MimiCodec) -> None:
    decoder = codec.stream_decoder(2)
    with pytest.raises(ValueError, match=r"\[2, 32, T\]"):
        decoder.decode(_codes(4, 1, batch=3), torch.tensor([True, True, True]))
    with pytest.raises(ValueError, match="codes must be"):
        codec.decode(torch.zeros(1, 8, 1, dtype=torch.long))
    decoder.close()


@pytest.mark.parametrize("batch, length", [(1, 2), (8, 2), (3, 8), (2, 600)])
def test_gemm_conv_transpose_matches_torch(batch: int, length: int) -> None:
    """The streaming view's transposed convolutions (one GEMM + overlap-add for short inputs,
    PyTorch's kernel for long ones) compute what nn.ConvTranspose1d computes."""
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose1d(64, 32, kernel_size=16, stride=8)
    assert GemmConvTranspose1d.supports(conv)
    fast = copy.deepcopy(conv)
    fast.__class__ = GemmConvTranspose1d
    x = torch.randn(batch, 64, length)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x), atol=1e-5, rtol=1e-5)
    assert not GemmConvTranspose1d.supports(torch.nn.ConvTranspose1d(4, 4, kernel_size=4, stride=2, groups=2))
    assert not GemmConvTranspose1d.supports(torch.nn.ConvTranspose1d(4, 4, kernel_size=5, stride=2))


def test_stream_decoder_uses_gemm_conv_transpose_and_keeps_codec_modules(codec: MimiCodec) -> None:
    decoder = codec.stream_decoder(1)
    fast = [m for m in decoder._model.decoder.modules() if isinstance(m, GemmConvTranspose1d)]
    assert len(fast) == 4  # SEANet's four upsampling layers; the codec's own modules are untouched
    assert not any(isinstance(m, GemmConvTranspose1d) for m in codec.model.modules())
    assert all(any(m.weight is p for p in codec.model.parameters()) for m in fast)  # weights shared
    decoder.close()


@pytest.mark.parametrize("bound", ["found", "given"])
def test_stream_decoder_runs_only_rows_up_to_the_last_active_one(codec: MimiCodec, bound: str) -> None:
    """Calls whose active rows end early run on a narrowed view of the streaming state; rows
    that join later and rows that sat out continue exactly where they were. The bound is found
    from the mask, or given by the caller (the engine knows its rows on the host)."""
    codes = {row: _codes(20 + row, 6) for row in range(3)}
    # per call: which rows are active (row 2 starts late; row 1 sits out the middle calls)
    plan = [(0, 1), (0,), (0, 2), (0, 1, 2), (0,), (1, 2)]
    decoder = codec.stream_decoder(3)
    got = {row: [] for row in range(3)}
    used = {row: 0 for row in range(3)}
    for active_rows in plan:
        batch = torch.zeros(3, NUM_CODEBOOKS, 1, dtype=torch.long)
        active = torch.zeros(3, dtype=torch.bool)
        for row in active_rows:
            batch[row] = codes[row][0, :, used[row] : used[row] + 1]
            active[row] = True
        wave = decoder.decode(batch, active, max(active_rows) + 1 if bound == "given" else None)
        assert wave.shape == (3, FRAME_SAMPLES)
        for row in active_rows:
            got[row].append(wave[row])
            used[row] += 1
    decoder.close()
    for row in range(3):
        alone = _solo(codec, codes[row][0, :, : used[row]], 1)
        torch.testing.assert_close(torch.cat(got[row]), alone, atol=ATOL, rtol=0, msg=f"row {row}")
