"""Mimi, the audio codec of CSM: waves <-> 32-codebook frames (moshi 0.2.13).

`MimiCodec` encodes context audio and decodes whole utterances; `MimiStreamDecoder` keeps
one streaming state per engine slot so every decoding slot is decoded in one batched call.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch  # noqa: E402
from moshi.models import loaders  # noqa: E402
from moshi.models.compression import MimiModel  # noqa: E402
from moshi.modules.streaming import StreamingModule  # noqa: E402
from moshi.modules.transformer import StreamingMultiheadAttention  # noqa: E402

from csm_core.constants import FRAME_SAMPLES, NUM_CODEBOOKS  # noqa: E402

RANDOM = "random"
DEFAULT_REPO = loaders.DEFAULT_REPO  # where real weights come from when no path is given
_SAFETENSORS_SUFFIXES = (".safetensors", ".sft", ".sfts")
_RANDOM_SEED = 20_250_301
# Std of the random codebook entries: small enough that random audio encodes to varied codes,
# large enough that decoded audio depends on the codes (moshi's own init is all zeros).
_RANDOM_CODEBOOK_STD = 0.05


class MimiCodec:
    """Non-streaming encode / decode, and the factory of streaming decoders."""

    def __init__(self, model: MimiModel):
        self.model = model

    @classmethod
    def load(cls, source: str | None, device: str | torch.device = "cpu") -> MimiCodec:
        """`None` / "random": the real architecture with fixed random weights (the global RNG
        is left as it was). A .safetensors file or a directory holding `loaders.MIMI_NAME`:
        those weights. Anything else: a Hugging Face repo id to download `MIMI_NAME` from."""
        if source is None or source == RANDOM:
            model = _random_mimi(device)
        else:
            model = loaders.get_mimi(_weights_file(source), device=device)
        model.set_num_codebooks(NUM_CODEBOOKS)
        model.eval()
        model.requires_grad_(False)
        return cls(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono 24 kHz waves (float [samples] each) -> codes (long [32, ceil(samples / 1920)]
        each), all in one batched call. Mimi's encoder is causal, so the zeros that pad a
        shorter wave to the longest one do not reach that wave's own frames."""
        if not waves:
            return []
        for i, wave in enumerate(waves):
            if wave.dim() != 1 or wave.numel() == 0:
                raise ValueError(
                    f"waves[{i}] has shape {tuple(wave.shape)}: expected a non-empty mono wave [samples]"
                )
        longest = max(wave.numel() for wave in waves)
        batch = torch.zeros(len(waves), 1, longest, device=self.device)  # [B, 1, samples]
        for i, wave in enumerate(waves):
            batch[i, 0, : wave.numel()] = wave.to(self.device, torch.float32)
        codes = self.model.encode(batch)  # [B, 32, ceil(longest / 1920)]
        return [
            codes[i, :, : math.ceil(wave.numel() / FRAME_SAMPLES)].clone()
            for i, wave in enumerate(waves)
        ]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, 32, T] -> waves [B, T * 1920], decoded in one non-streaming call."""
        _check_codes(codes)
        return self.model.decode(codes.to(self.device))[:, 0]  # [B, T * 1920]

    def stream_decoder(self, batch_size: int) -> MimiStreamDecoder:
        return MimiStreamDecoder(self.model, batch_size)


class MimiStreamDecoder:
    """Streaming decode for `batch_size` rows, one row per engine slot.

    It decodes through its own copies of Mimi's decoder-side modules, which share the codec's
    weights, so the codec can still encode and decode whole utterances in between.
    Only the decoder side streams (not the whole MimiModel): moshi would CUDA-graph a
    streaming MimiModel, which requires the same T on every call.

    On CUDA moshi captures a CUDA graph of each streaming module's exec-mask update at its
    second call; the constructor makes both calls, so the capture happens on the constructing
    thread, before the engine's threads run work on the GPU alongside it.
    """

    def __init__(self, model: MimiModel, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self._model = _decoder_view(model)
        self._positions_per_frame = round(model.encoder_frame_rate / model.frame_rate)
        self._device = next(model.parameters()).device
        self._streaming = [
            module
            for part in (self._model.upsample, self._model.decoder_transformer, self._model.decoder)
            for module in _outermost_streaming(part)
        ]
        self._attentions = [
            module
            for part in self._streaming
            for module in part.modules()
            if isinstance(module, StreamingMultiheadAttention)
        ]
        self._exits = [module.streaming(batch_size) for module in self._streaming]
        self._batched = _batched_state_tensors(self._streaming, batch_size)
        if self._device.type == "cuda":
            everyone = torch.ones(batch_size, dtype=torch.bool, device=self._device)  # the state's own mask
            for _ in range(2):  # moshi's CUDAGraphed: the first call runs eagerly, the second captures
                for module in self._streaming:
                    module.set_exec_mask(everyone)

    def reset(self, rows: list[int]) -> None:
        """New requests took these rows: their state goes back to the start of a stream."""
        if not rows:
            return
        mask = torch.zeros(self.batch_size, dtype=torch.bool, device=self._device)
        mask[torch.tensor(rows, device=self._device)] = True
        for module in self._streaming:
            module.reset_streaming(mask)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, active: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """Codes [B, 32, T] -> waves [B, T * 1920]. Only rows where `active` [B] is True advance;
        the state of the others is left exactly as it was and their output is meaningless.

        rows: run only the first `rows` rows (every active row must be among them; the caller
        knows them on the host). None: up to the last active row, found with a host sync on
        CUDA; slots are handed out lowest first, so the live rows are (nearly) a prefix."""
        _check_codes(codes)
        if codes.shape[0] != self.batch_size or active.shape != (self.batch_size,):
            raise ValueError(
                f"expected codes [{self.batch_size}, {NUM_CODEBOOKS}, T] and active [{self.batch_size}], "
                f"got {tuple(codes.shape)} and {tuple(active.shape)}"
            )
        if rows is None:
            rows = int(active.nonzero().max()) + 1 if bool(active.any()) else 1
        if not 1 <= rows <= self.batch_size:
            raise ValueError(f"rows must be in 1..{self.batch_size}, got {rows}")
        active = active.to(self._device, torch.bool)
        # The mask is set on the full state first: on CUDA moshi replays a graph captured on it.
        for module in self._streaming:
            module.set_exec_mask(active)
        with self._narrowed(rows):
            saved = self._save_ring_slots(codes.shape[-1])
            wave = self._model.decode(codes[:rows].to(self._device))[:, 0]  # [rows, T * 1920]
            self._restore_ring_slots(saved, active[:rows])
        if rows < self.batch_size:
            wave = torch.cat([wave, wave.new_zeros(self.batch_size - rows, wave.shape[1])])
        return wave

    @contextlib.contextmanager
    def _narrowed(self, rows: int):
        """Run on the first `rows` rows only: a lone stream in slot 0 of a 256-slot engine then
        pays for one row, not 256. Every streaming state tensor (batch first; the ring KV
        caches' [2, B, ...]) is swapped for a view of its first rows for the call; moshi updates
        its states in place (that is how it honours exec masks), so the writes land in the
        full tensors, which are put back afterwards. The exec masks are views too, of what
        was set on the full state (on CUDA by moshi's captured graph)."""
        if rows == self.batch_size:
            yield
            return
        full = [getattr(obj, name) for obj, name, _ in self._batched]
        try:
            for (obj, name, dim), tensor in zip(self._batched, full):
                setattr(obj, name, tensor.narrow(dim, 0, rows))
            yield
        finally:
            for (obj, name, _), tensor in zip(self._batched, full):
                setattr(obj, name, tensor)

    def close(self) -> None:
        for exit_stack in self._exits:
            exit_stack.close()
        self._exits = []

    # moshi's ring KV cache writes the keys and values of masked rows too (only their offsets
    # stay put). Once a row has decoded more frames than the attention context (10 s), those
    # writes land on slots the row still attends to, so its next call would differ from
    # never having made the masked call. We save the slots a call will write and put back
    # the masked rows' values: 2 positions per frame, row and layer; no host sync.
    def _save_ring_slots(self, frames: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        saved = []
        steps = torch.arange(frames * self._positions_per_frame, device=self._device)
        for attention in self._attentions:
            cache = attention._streaming_state.kv_cache
            index = (cache.end_offset.view(-1, 1) + steps) % cache.capacity  # [B, 2T] ring slots
            _, batch, heads, _, dim = cache.cache.shape  # [2, B, heads, capacity, dim]
            index = index.view(batch, 1, -1, 1).expand(-1, heads, -1, dim)  # [B, heads, 2T, dim]
            saved.append((index, torch.stack([cache.cache[0].gather(2, index), cache.cache[1].gather(2, index)])))
        return saved

    def _restore_ring_slots(self, saved: list[tuple[torch.Tensor, torch.Tensor]], active: torch.Tensor) -> None:
        keep_new = active.view(-1, 1, 1, 1)
        for attention, (index, before) in zip(self._attentions, saved):
            cache = attention._streaming_state.kv_cache.cache
            for kv in range(2):
                merged = torch.where(keep_new, cache[kv].gather(2, index), before[kv])
                cache[kv].scatter_(2, index, merged)


def _random_mimi(device: str | torch.device) -> MimiModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        model = loaders.get_mimi(None, device="cpu")
        for module in model.modules():
            if hasattr(module, "embedding_sum"):
                module.embedding_sum.normal_(std=_RANDOM_CODEBOOK_STD)
                module._embedding = None
    return model.to(device)


def _weights_file(source: str) -> str:
    path = Path(source).expanduser()
    if _looks_local(source):
        weights = path / loaders.MIMI_NAME if path.is_dir() else path
        if not weights.is_file() or weights.suffix not in _SAFETENSORS_SUFFIXES:
            raise FileNotFoundError(
                f"Mimi weights not found: {weights} (give a .safetensors file or a directory "
                f"holding {loaders.MIMI_NAME})"
            )
        return str(weights)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(source, loaders.MIMI_NAME)


def _looks_local(source: str) -> bool:
    """Paths: anything that exists, is absolute, starts with "." or "~", or names a
    .safetensors file. Hub repo ids ("owner/name") are none of these."""
    path = Path(source)
    return (
        path.exists()
        or path.is_absolute()
        or source.startswith((".", "~"))
        or path.suffix in _SAFETENSORS_SUFFIXES
    )


def _decoder_view(model: MimiModel) -> MimiModel:
    """A MimiModel whose decoder-side modules are new objects with their own streaming state;
    parameters, buffers and the (stateless) encoder side and quantizer are shared. Its
    transposed convolutions run as one GEMM each (`GemmConvTranspose1d`)."""
    memo: dict[int, object] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    for shared in (model.encoder, model.encoder_transformer, model.downsample, model.quantizer):
        memo[id(shared)] = shared
    view = copy.deepcopy(model, memo)
    for module in view.decoder.modules():
        if type(module) is torch.nn.ConvTranspose1d and GemmConvTranspose1d.supports(module):
            module.__class__ = GemmConvTranspose1d  # the view's own copy; weights stay shared
    return view


class GemmConvTranspose1d(torch.nn.ConvTranspose1d):
    """ConvTranspose1d that runs as one GEMM plus an overlap-add when its weights outweigh its input.

    Streaming decode feeds Mimi's upsampling convolutions a few time steps at a time. For such
    short inputs PyTorch's CPU kernels are slow: batch 1 falls back to `slow_conv_transpose`
    (~35 ms for the 1024->512, kernel 16 layer, whose weights are 33 MB) and oneDNN lays the
    weights out anew on every call (~36 ms at batch 8). One GEMM [B*L, C_in] x [C_in, C_out*K]
    reads them once (5-10 ms). Same parameters, same math up to fp32 rounding (~1e-6).
    (The streaming view swaps its own copies' class, as torch.nn.utils.parametrize does.)
    """

    @staticmethod
    def supports(conv: torch.nn.ConvTranspose1d) -> bool:
        (k,), (s,) = conv.kernel_size, conv.stride
        return (conv.groups == 1 and conv.padding == (0,) and conv.dilation == (1,)
                and conv.output_padding == (0,) and k % s == 0)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None or x.dim() != 3 or x.numel() >= self.weight.numel():
            return super().forward(x, output_size)  # long inputs: PyTorch's kernels do well
        b, c_in, length = x.shape
        (k,), (s,) = self.kernel_size, self.stride
        c_out, taps = self.out_channels, k // s
        rows = x.transpose(1, 2).reshape(b * length, c_in)  # one GEMM for all rows: weights read once
        z = torch.mm(rows, self.weight.reshape(c_in, c_out * k))  # [B * L, C_out * K]
        z = z.view(b, length, c_out, taps, s).permute(0, 2, 3, 1, 4)  # [B, C_out, taps, L, S]
        y = x.new_zeros(b, c_out, length + taps - 1, s)
        for j in range(taps):  # input step t, tap j lands on output block t + j
            y[:, :, j : j + length] += z[:, :, j]
        y = y.view(b, c_out, -1)
        return y if self.bias is None else y + self.bias[:, None]


def _batched_state_tensors(streaming: list[StreamingModule], batch_size: int) -> list[tuple[object, str, int]]:
    """(object, attribute, batch dim) of every tensor of the streaming states that has one row
    per stream: batch first, except the ring KV caches' [2, B, heads, capacity, dim]."""
    found = []
    for part in streaming:
        for module in part.modules():
            state = getattr(module, "_streaming_state", None) if isinstance(module, StreamingModule) else None
            if state is None:
                continue
            cache = getattr(state, "kv_cache", None)
            for obj in (state, cache) if cache is not None else (state,):
                for name, value in vars(obj).items():
                    if not isinstance(value, torch.Tensor) or value.dim() == 0:
                        continue
                    dim = 1 if obj is cache and name == "cache" else 0
                    if value.shape[dim] == batch_size:
                        found.append((obj, name, dim))
    return found


def _outermost_streaming(module: torch.nn.Module) -> list[StreamingModule]:
    if isinstance(module, StreamingModule):
        return [module]
    return [found for child in module.children() for found in _outermost_streaming(child)]


def _check_codes(codes: torch.Tensor) -> None:
    if codes.dim() != 3 or codes.shape[1] != NUM_CODEBOOKS or codes.shape[2] == 0:
        raise ValueError(f"codes must be [B, {NUM_CODEBOOKS}, T] with T >= 1, got {tuple(codes.shape)}")
