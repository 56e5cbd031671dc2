"""CSM's audible-to-no-one watermark: silentcipher 1.0.5 at 44.1 kHz, one stream per call.

silentcipher's BatchNorm layers stay in training mode, as in the reference, so each call
normalises with the statistics of its own input: never put two streams in one call.
"""

from __future__ import annotations

import argparse
import copy
import threading
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
import yaml
with warnings.catch_warnings():
    # silentcipher imports pydub, which warns at import when no ffmpeg is on PATH; nothing here
    # uses pydub's ffmpeg (audio stays in tensors), so the warning would only mislead the log.
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg or avconv", category=RuntimeWarning)
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


def _check_wave(pcm: torch.Tensor) -> None:
    if pcm.dim() != 1:
        raise ValueError(f"expected one mono stream [samples], got shape {tuple(pcm.shape)}")
    if pcm.numel() and not bool(torch.isfinite(pcm).all()):
        raise ValueError("audio to watermark contains NaN or infinite samples")
