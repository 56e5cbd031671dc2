"""Playing a stream while it arrives (csm-say --play): chunk bytes -> float32 PCM -> speakers."""

from __future__ import annotations

import numpy as np

from csm_wire import wav


class ChunkDecoder:
    """Turns the chunks of one stream ("wav", "pcm" or "opus") back into float32 mono PCM."""

    def __init__(self, fmt: str, sample_rate: int):
        self._fmt = fmt
        self._skip = wav.HEADER_BYTES if fmt == "wav" else 0
        self._opus = None
        if fmt == "opus":
            import sphn

            self._opus = sphn.OpusStreamReader(sample_rate)

    def decode(self, data: bytes) -> np.ndarray:
        if self._opus is not None:
            pcm = self._opus.append_bytes(data)
            return np.asarray(pcm, np.float32).reshape(-1)
        skipped = min(self._skip, len(data))
        self._skip -= skipped
        return np.frombuffer(data[skipped:], "<i2").astype(np.float32) / 32768.0


class Player:
    """Blocking playback on the default output device (needs sounddevice and PortAudio)."""

    def __init__(self, sample_rate: int):
        try:
            import sounddevice
        except (ImportError, OSError) as exc:
            raise RuntimeError(
                "--play needs the client's 'play' extra and the PortAudio library: "
                "pip install 'csm-client[play]' (from a checkout: pip install './client[play]'; "
                "sounddevice, and sphn for Opus); on Debian/Ubuntu also apt install libportaudio2") from exc
        self._stream = sounddevice.OutputStream(samplerate=sample_rate, channels=1, dtype="float32")
        self._stream.start()

    def play(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self._stream.write(pcm.reshape(-1, 1))  # [n, 1]

    def close(self) -> None:
        self._stream.stop()  # returns once what was written has been played
        self._stream.close()
