"""The output sample rates each encoding accepts: a fact the request rules check
(server/engine/rules.py) and the encoders keep (server/audio_encoding.py). It imports neither
torch nor FFmpeg, so the engine loads where PyAV is not installed (the GPU check's image)."""

from __future__ import annotations

from server.engine.types import OutputEncoding

PCM_RATE_RANGE = (8_000, 48_000)  # PCM, WAV and FLAC output: any rate in this range (Hz)
OPUS_RATES = (24_000, 48_000)  # Ogg/Opus output rates
MPEG_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)  # MP3 and AAC
RATES = {OutputEncoding.OGG_OPUS: OPUS_RATES, OutputEncoding.MP3: MPEG_RATES, OutputEncoding.AAC: MPEG_RATES}


def supported_rate(encoding: OutputEncoding, sample_rate: int) -> bool:
    rates = RATES.get(encoding)
    if rates is not None:
        return sample_rate in rates
    return PCM_RATE_RANGE[0] <= sample_rate <= PCM_RATE_RANGE[1]


def rate_rule(encoding: OutputEncoding) -> str:
    """The accepted output rates, in words, for error messages."""
    rates = RATES.get(encoding)
    if rates is not None:
        return f"{encoding.name} output supports {', '.join(map(str, rates))} Hz"
    return f"{encoding.name} output supports any rate from {PCM_RATE_RANGE[0]} to {PCM_RATE_RANGE[1]} Hz"
