"""CSM's audible-to-no-one watermark: silentcipher 1.0.5 at 44.1 kHz.

silentcipher's BatchNorm layers stay in training mode, as in the reference, so each call of its
`encode_wav` normalises with the statistics of its own input: two streams in one such call would
change each other's audio. `apply` is that reference call, one stream at a time. `apply_batch`
watermarks many streams' chunks in one pass of the same modules, computing each row exactly as
`encode_wav` would compute it alone: every BatchNorm in training mode becomes an instance norm
(the statistics of one row, which is what a batch of one has) with the same affine weights and
eps, and the power normalisation, STFT, message and inverse STFT are per row. The result equals
`apply` within float32 rounding (tests/test_watermark_batch.py states and checks the tolerance).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
import yaml
with warnings.catch_warnings():
    # silentcipher imports pydub, which warns at import when no ffmpeg is on PATH; nothing here
    # uses pydub's ffmpeg (audio stays in tensors), so the warning would only mislead the log.
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg or avconv", category=RuntimeWarning)
    from silentcipher.model import Layer
    from silentcipher.server import Model, get_model
    from silentcipher.stft import STFT

from csm_core.constants import CSM_PUBLIC_WATERMARK_KEY, SAMPLE_RATE

RANDOM = "random"
HUB_REPO = "sony/silentcipher"
HUB_SUBDIR = "44_1_khz/73999_iteration"
CHECKPOINT_FILES = ("enc_c.ckpt", "dec_c.ckpt", "dec_m_0.ckpt")
WATERMARK_SAMPLE_RATE = 44_100
MESSAGE_SDR_DB = 36  # the reference's strength
_RANDOM_SEED = 20_250_302

# silentcipher's STFT is a process-wide singleton holding per-call state (`num_samples`),
# shared by every model it builds: models that share it take this lock. A `replica()` gets an
# STFT of its own (and its own lock), so replicas watermark in parallel.
_SILENTCIPHER_LOCK = threading.Lock()


@dataclass(slots=True, frozen=True)
class WatermarkCheck:
    detected: bool  # a message was found and it is this watermarker's key
    key: tuple[int, ...] | None  # the message found, if any
    confidence: float | None  # share of message repetitions that agree with it, if any


class Watermarker:
    def __init__(self, model: Model, key: tuple[int, ...], lock: threading.Lock = _SILENTCIPHER_LOCK):
        self.model = model
        self.key = key
        self._lock = lock
        self._messages: dict[int, torch.Tensor] = {}  # encoded message by STFT frames (apply_batch)
        self._cuda_stream: torch.cuda.Stream | None = None  # apply_batch's own stream, on CUDA

    def replica(self) -> Watermarker:
        """A copy that can run at the same time as this one, on another thread: its own copy of
        the model (silentcipher's BatchNorm layers run in training mode and update their
        buffers on every call) and its own STFT, outside silentcipher's singleton."""
        stft = self.model.stft
        model = copy.copy(self.model)
        model.enc_c, model.dec_c = copy.deepcopy(self.model.enc_c), copy.deepcopy(self.model.dec_c)
        model.dec_m = copy.deepcopy(self.model.dec_m)
        private = STFT.__new__(STFT)  # not STFT(...): its metaclass hands out the shared instance
        STFT.__init__(private, stft.filter_length, stft.hop_len)
        model.stft = private.to(stft.window.device)
        return Watermarker(model, self.key, threading.Lock())

    @classmethod
    def load(
        cls,
        weights: str | None,
        device: str | torch.device = "cpu",
        key: tuple[int, ...] | list[int] = CSM_PUBLIC_WATERMARK_KEY,
    ) -> Watermarker:
        """`None` / "random": silentcipher's 44.1 kHz model with fixed random weights (the global
        RNG is left as it was). A directory with enc_c.ckpt, dec_c.ckpt, dec_m_0.ckpt (and
        hparams.yaml, else the shipped one): those weights. Anything else: a Hugging Face repo id."""
        checked_key = _check_key(key)
        if weights is None or weights == RANDOM:
            return cls(_random_model(str(device)), checked_key)
        directory = _checkpoint_dir(weights)
        hparams = directory / "hparams.yaml"
        if not hparams.is_file():
            hparams = _shipped_hparams()
        model = get_model(model_type="44.1k", ckpt_path=str(directory), config_path=str(hparams), device=str(device))
        return cls(model, checked_key)

    def apply(self, pcm: torch.Tensor) -> torch.Tensor:
        """Watermark one stream: float32 [n] at 24 kHz -> float32 [n] at 24 kHz.

        Empty or all-zero input comes back unchanged (silentcipher skips silence; there is
        nothing to hide a message in). Any other length is watermarked, though under about
        one second (44,100 samples at 44.1 kHz, 21 STFT frames) only part of the message fits.
        """
        _check_wave(pcm)
        if pcm.numel() == 0 or not bool(pcm.any()):
            return pcm.clone()
        wave = pcm.detach().to("cpu", torch.float32)
        high = AF.resample(wave, SAMPLE_RATE, WATERMARK_SAMPLE_RATE)  # [ceil(n * 147 / 80)]
        with self._lock:
            marked, _ = self.model.encode_wav(
                high.numpy(), WATERMARK_SAMPLE_RATE, list(self.key), calc_sdr=False, message_sdr=MESSAGE_SDR_DB
            )
        back = AF.resample(torch.from_numpy(np.asarray(marked, dtype=np.float32)), WATERMARK_SAMPLE_RATE, SAMPLE_RATE)
        out = torch.zeros(pcm.numel(), dtype=torch.float32)  # [n]
        kept = min(back.numel(), pcm.numel())
        out[:kept] = back[:kept]
        return out.to(pcm.device)

    def apply_batch(self, pcms: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Watermark several streams at once: float32 [n_i] each at 24 kHz -> float32 [n_i] each,
        each row as `apply` would make it alone (within float32 rounding). Waves of equal length
        go through silentcipher in one batched pass (one pass per distinct length); all-zero
        waves come back unchanged. On CUDA the work runs on this watermarker's own CUDA stream
        with one host sync per pass. Raises if any wave is not finite (the caller decides whom
        to fail: `apply` on each wave tells which)."""
        for pcm in pcms:
            _check_shape(pcm)
        out: list[torch.Tensor | None] = [None] * len(pcms)
        by_length: dict[int, list[int]] = {}
        for i, pcm in enumerate(pcms):
            by_length.setdefault(pcm.numel(), []).append(i)
        for n, rows in by_length.items():
            if n == 0:
                for i in rows:
                    out[i] = pcms[i].clone()
                continue
            waves = torch.stack([pcms[i].detach().to("cpu", torch.float32) for i in rows])  # [B, n]
            if not bool(torch.isfinite(waves).all()):
                raise ValueError("audio to watermark contains NaN or infinite samples")
            marked = self._apply_rows(waves)  # [B, n] on the CPU
            for j, i in enumerate(rows):
                out[i] = marked[j].to(pcms[i].device)
        return out

    def _apply_rows(self, waves: torch.Tensor) -> torch.Tensor:
        """[B, n] float32 at 24 kHz on the CPU -> [B, n] watermarked, on the CPU."""
        device = self.model.stft.window.device
        if device.type == "cuda":
            if self._cuda_stream is None:
                self._cuda_stream = torch.cuda.Stream(device)
            on_stream = torch.cuda.stream(self._cuda_stream)
        else:
            on_stream = contextlib.nullcontext()
        with torch.no_grad(), on_stream:
            x = waves.to(device)  # [B, n]
            high = AF.resample(x, SAMPLE_RATE, WATERMARK_SAMPLE_RATE)  # [B, ceil(n * 147 / 80)]
            marked = _encode_rows(self.model, high, self._message(high.shape[1]))
            back = AF.resample(marked, WATERMARK_SAMPLE_RATE, SAMPLE_RATE)
            kept = min(back.shape[1], x.shape[1])
            out = torch.zeros_like(x)
            out[:, :kept] = back[:, :kept]
            out = torch.where((x != 0).any(dim=1, keepdim=True), out, x)  # silence stays as it was
            return out.cpu()  # the pass's one host sync

    def _message(self, samples: int) -> torch.Tensor:
        """The key as silentcipher's encoder feeds it to the carrier decoder, for waves of
        `samples` samples at 44.1 kHz: [1, 1, n_fft / 2 + 1, frames] (cached by frames)."""
        stft = self.model.stft
        frames = (samples + stft.win_len - samples % stft.win_len) // stft.hop_len + 1
        if frames not in self._messages:
            bits = "".join(f"{byte:08b}" for byte in self.key)
            pairs = [int(bits[i : i + 2], 2) for i in range(0, len(bits), 2)]  # silentcipher's binary_encode
            msgs, _ = self.model.letters_encoding(frames, [pairs])
            msg = torch.from_numpy(msgs[None]).to(stft.window.device).float()
            self._messages[frames] = self.model.enc_c.transform_message(msg)
        return self._messages[frames]

    def verify(self, pcm: torch.Tensor, phase_shift_decoding: bool = True) -> WatermarkCheck:
        """Look for a message in one 24 kHz stream. Phase-shift decoding (the reference's
        setting) tries 205 alignments: on CPU it costs minutes per second of audio."""
        _check_wave(pcm)
        if pcm.numel() == 0 or not bool(pcm.any()):
            return WatermarkCheck(detected=False, key=None, confidence=None)
        high = AF.resample(pcm.detach().to("cpu", torch.float32), SAMPLE_RATE, WATERMARK_SAMPLE_RATE)
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns when the audio holds no full message
            result = self.model.decode_wav(high.numpy(), WATERMARK_SAMPLE_RATE, phase_shift_decoding=phase_shift_decoding)
        if not result["status"]:
            return WatermarkCheck(detected=False, key=None, confidence=None)
        found = tuple(int(v) for v in result["messages"][0])
        return WatermarkCheck(detected=found == self.key, key=found, confidence=float(result["confidences"][0]))


def _encode_rows(model: Model, y: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
    """silentcipher's `encode_wav` (1.0.5) for each row of y [B, m] at 44.1 kHz, rows independent."""
    config = model.config
    power = (y.double() ** 2).mean(dim=1, keepdim=True)  # [B, 1]
    silent = power == 0
    power = torch.where(silent, torch.ones_like(power), power)
    y_norm = y * torch.sqrt(model.average_energy_VCTK / power).float()
    carrier, carrier_phase = model.stft.transform(y_norm)  # [B, F, T] each
    carrier, carrier_phase = carrier[:, None], carrier_phase[:, None]
    carrier_enc = _rowwise(model.enc_c.main, carrier)
    msg_enc = message.expand(y.shape[0], -1, -1, -1)
    # silentcipher feeds the carrier decoder [carrier_enc, 32 copies of the carrier, 32 of the
    # message]: its first convolutions are linear, so the copies are folded into their weights
    # (_rowwise): 34 input channels instead of 96, the same sums in another order.
    merged = torch.cat((carrier_enc, carrier, msg_enc), dim=1)  # [B, 34, F, T]
    message_info = _carrier_decoder(model.dec_c, merged, MESSAGE_SDR_DB)
    if config.frame_level_normalization:
        message_info = message_info * (torch.mean(carrier**2, dim=2, keepdim=True) ** 0.5)
    elif config.utterance_level_normalization:
        message_info = message_info * (torch.mean(carrier**2, dim=(2, 3), keepdim=True) ** 0.5)
    if config.ensure_negative_message:
        carrier_reconst = F.relu(-message_info + carrier)
    elif config.ensure_constrained_message:
        message_info = torch.minimum(torch.maximum(message_info, -carrier), carrier)
        carrier_reconst = message_info + carrier
    else:
        carrier_reconst = torch.abs(message_info + carrier)
    stft = model.stft
    magnitude, phase = carrier_reconst.squeeze(1), carrier_phase.squeeze(1)
    spectrum = magnitude * torch.cos(phase) + 1j * magnitude * torch.sin(phase)
    wave = torch.istft(spectrum, stft.filter_length, hop_length=stft.hop_len, win_length=stft.win_len,
                       window=stft.window.to(y.device))  # [B, padded m]
    wave = wave[:, : -(stft.win_len - y.shape[1] % stft.win_len)]  # silentcipher's STFT.inverse
    wave = wave * torch.sqrt(power / model.average_energy_VCTK).float()
    return torch.where(silent, y, wave)  # silence is skipped, as encode_wav skips it


def _carrier_decoder(decoder: torch.nn.Module, x: torch.Tensor, message_sdr: float) -> torch.Tensor:
    """silentcipher's CarrierDecoder.forward, rows independent."""
    h = _rowwise(decoder.main, x, fold_first=True)
    if decoder.config.ensure_negative_message:
        h = torch.abs(h)
    h[:, :, decoder.message_band_size :, :] = 0
    if not decoder.config.no_normalization:
        h = h / torch.mean(h**2, dim=2, keepdim=True) ** 0.5 / (10 ** (message_sdr / 20))
    return h


def _rowwise(layers: torch.nn.Sequential, x: torch.Tensor, fold_first: bool = False) -> torch.Tensor:
    """`layers(x)` with each row normalised as if it were alone: a BatchNorm in training mode
    uses the statistics of its batch, which for a batch of one are the row's own (an instance
    norm, same affine weights and eps). Its running statistics are left alone: in training mode
    they do not affect the output. `fold_first`: x holds the carrier decoder's input with its
    two blocks of 32 identical channels given once each, and the first layer sums its weights
    over each block."""
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            x = layer(x)  # Dropout(0)
            continue
        if fold_first and i == 0:
            z = _folded(layer.conv, x) * torch.sigmoid(_folded(layer.gate, x))
        else:
            z = layer.conv(x) * torch.sigmoid(layer.gate(x))
        bn = layer.bn
        if bn.training or bn.running_mean is None:
            x = F.instance_norm(z, weight=bn.weight, bias=bn.bias, eps=bn.eps)
        else:
            x = bn(z)
    return x


def _folded(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv over [x[:, :-2], 32 copies of x[:, -2], 32 copies of x[:, -1]]."""
    w = conv.weight  # [out, own + 64, k, k]
    own = w.shape[1] - 64
    weight = torch.cat((w[:, :own], w[:, own : own + 32].sum(1, keepdim=True), w[:, own + 32 :].sum(1, keepdim=True)), 1)
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class _UnloadedModel(Model):
    """silentcipher's model with the weights its constructor drew, no checkpoint read."""

    def load_models(self, ckpt_dir: str | None) -> None:
        return None


def _random_model(device: str) -> Model:
    config = argparse.Namespace(**yaml.safe_load(_shipped_hparams().read_text()))
    config.load_ckpt = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        return _UnloadedModel(config, device)


def _checkpoint_dir(weights: str) -> Path:
    path = Path(weights).expanduser()
    if path.exists() or path.is_absolute() or weights.startswith((".", "~")):
        missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"silentcipher checkpoint files missing in {path}: {', '.join(missing)}")
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=weights, allow_patterns=[f"{HUB_SUBDIR}/*"])) / HUB_SUBDIR


def _shipped_hparams() -> Path:
    return Path(str(resources.files("csm_core") / "data" / "silentcipher_44k_hparams.yaml"))


def _check_key(key: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    values = tuple(key)
    if len(values) != 5 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
    ):
        raise ValueError(f"watermark key must be 5 integers in 0..255, got {key!r}")
    return tuple(int(v) for v in values)


def _check_shape(pcm: torch.Tensor) -> None:
    if pcm.dim() != 1:
        raise ValueError(f"expected one mono stream [samples], got shape {tuple(pcm.shape)}")


def _check_wave(pcm: torch.Tensor) -> None:
    _check_shape(pcm)
    if pcm.numel() and not bool(torch.isfinite(pcm).all()):
        raise ValueError("audio to watermark contains NaN or infinite samples")
