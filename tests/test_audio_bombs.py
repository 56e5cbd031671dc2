"""Decompression bombs: small files of long audio are refused before they are decoded whole.

Each bomb is built here (nothing downloaded): an hour of silence as FLAC (546 KB), as Ogg/Opus
(sphn's own pages of 10 s repeated, 10.8 MB) and as raw PCM; a container whose header says
less than it holds; an Ogg/Opus stream padded with empty pages. The memory figure is measured
in a fresh process (its peak RSS before and after each bomb), so nothing else in the test run
counts toward it. Torch-free.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import sphn

from csm_core import audio_io
from csm_core.audio_io import AudioDecodeError, AudioTooLong, decode_audio
from csm_core.ogg_opus import MAX_IDLE, OPUS_RATE, opus_length, packet_samples

HOUR_S = 3600
LIMIT_S = 120.0


def flac_silence(seconds: float, rate: int = 48_000) -> bytes:
    """Silence as FLAC, written a minute at a time: ~150 bytes per second of audio."""
    buffer = io.BytesIO()
    minute = np.zeros(rate * 60, np.float32)
    with sf.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        whole, rest = divmod(int(seconds * rate), len(minute))
        for _ in range(whole):
            f.write(minute)
        f.write(minute[:rest])
    return buffer.getvalue()


def ogg_pages(data: bytes) -> list[bytes]:
    pages, pos = [], 0
    while pos < len(data):
        count = data[pos + 26]
        size = 27 + count + sum(data[pos + 27:pos + 27 + count])
        pages.append(data[pos:pos + size])
        pos += size
    return pages


def opus_silence(tmp_path, repeats: int) -> bytes:
    """10 s of silence encoded by sphn, its audio pages repeated: a stream sphn decodes whole
    (the Ogg reader checks each page's CRC, not its sequence number or granule)."""
    path = tmp_path / "ten-seconds.opus"
    sphn.write_opus(str(path), np.zeros((1, OPUS_RATE * 10), np.float32), OPUS_RATE)
    pages = ogg_pages(path.read_bytes())
    return b"".join(pages[:2]) + b"".join(pages[2:]) * repeats


@pytest.fixture(scope="module")
def hour_of_flac() -> bytes:
    return flac_silence(HOUR_S)


def test_an_hour_of_flac_is_refused_from_its_header(hour_of_flac):
    t0 = time.perf_counter()
    with pytest.raises(AudioTooLong) as refused:
        decode_audio(hour_of_flac, "auto", None, max_seconds=LIMIT_S)
    elapsed = time.perf_counter() - t0
    print(f"\nFLAC bomb: {len(hour_of_flac) / 1000:.0f} KB, {HOUR_S} s of audio, refused in {elapsed * 1000:.1f} ms")
    assert str(refused.value) == "3600.0 s is longer than the 120 s accepted"
    assert refused.value.seconds == HOUR_S and refused.value.limit_s == LIMIT_S
    assert elapsed < 0.5


def test_an_hour_of_opus_is_refused_from_its_packets(tmp_path):
    bomb = opus_silence(tmp_path, repeats=HOUR_S // 10)
    t0 = time.perf_counter()
    with pytest.raises(AudioTooLong) as refused:
        decode_audio(bomb, "auto", None, max_seconds=LIMIT_S)
    elapsed = time.perf_counter() - t0
    print(f"\nOpus bomb: {len(bomb) / 1e6:.1f} MB, {HOUR_S} s of audio, refused in {elapsed * 1000:.1f} ms")
    assert str(refused.value) == "runs longer than the 120 s accepted"  # counting stopped there
    assert elapsed < 0.5


def test_the_opus_count_is_what_sphn_decodes(tmp_path):
    for data in (opus_silence(tmp_path, repeats=2), (tmp_path / "ten-seconds.opus").read_bytes()):
        length = opus_length(data)
        channels = sphn.read_opus_bytes(data)[0]
        assert length.complete and length.channels == channels.shape[0] == 1
        assert length.samples == channels.shape[1]
    samples, rate = decode_audio(opus_silence(tmp_path, repeats=11), "ogg_opus", None, max_seconds=LIMIT_S)
    assert rate == OPUS_RATE and len(samples) == 110 * OPUS_RATE  # under the limit: decoded


@pytest.mark.parametrize(("toc", "samples"), [
    (bytes([0x80 | 3 << 3]), 960),  # CELT 20 ms, one frame
    (bytes([0x80 | 0 << 3 | 1]), 240),  # CELT 2.5 ms, two frames
    (bytes([0x60 | 0x08 | 2]), 1920),  # hybrid 20 ms, two frames
    (bytes([3 << 3 | 3, 2]), 5760),  # SILK 60 ms, two frames: 120 ms, the most a packet holds
    (bytes([3 << 3 | 3, 3]), 0),  # 180 ms: not a packet
    (bytes([0x80 | 3]), 0),  # code 3 without its frame count
    (b"", 0),
])
def test_packet_samples(toc, samples):
    assert packet_samples(toc) == samples


def test_opus_padded_with_empty_pages_is_refused_without_walking_them(tmp_path):
    data = (tmp_path / "x.opus")
    sphn.write_opus(str(data), np.zeros((1, OPUS_RATE), np.float32), OPUS_RATE)
    pages = ogg_pages(data.read_bytes())
    empty = pages[2][:4] + bytes([0, 0]) + pages[2][6:26] + b"\x00"  # a page that holds no segment
    padded = b"".join(pages[:2]) + empty * (60 << 20 >> 5) + b"".join(pages[2:])  # 60 MiB of them
    t0 = time.perf_counter()
    with pytest.raises(AudioDecodeError, match=f"more than {MAX_IDLE} pages and packets carry no audio"):
        decode_audio(padded, "ogg_opus", None, max_seconds=LIMIT_S)
    assert time.perf_counter() - t0 < 0.5


def test_raw_pcm_is_measured_before_it_is_converted():
    hour = bytes(2 * 8_000 * HOUR_S)  # 57.6 MB of s16 at 8 kHz
    with pytest.raises(AudioTooLong, match="3600.0 s is longer than the 120 s accepted"):
        decode_audio(hour, "pcm_s16le", 8_000, max_seconds=LIMIT_S)


class LyingFile:
    """A container that declares one second and then never ends; counts what it hands out."""

    format, channels, samplerate, frames = "FLAC", 1, 48_000, 48_000
    handed_out = 0

    def __init__(self, _):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, frames, dtype, out=None):
        out = np.zeros(frames, np.float32) if out is None else out[:frames]
        out[:] = 0.0
        LyingFile.handed_out += len(out)
        return out


def test_a_header_that_lies_is_caught_by_the_running_count(monkeypatch):
    monkeypatch.setattr(audio_io, "_Sequential", LyingFile)
    with pytest.raises(AudioTooLong, match="runs longer than the 2 s accepted"):
        decode_audio(b"not read", "auto", None, max_seconds=2.0)
    assert 2 * 48_000 < LyingFile.handed_out <= 2 * 48_000 + audio_io._BLOCK_FRAMES


def test_a_flac_stream_without_its_length_is_decoded_with_the_count():
    """FLAC written while streaming (this server's own HTTP `flac`) says no length: decoded all the
    same, the running count its only bound. It used to raise a ValueError from numpy."""
    clip = (0.3 * np.sin(np.arange(48_000 * 3) / 7.0)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, clip, 48_000, format="FLAC", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    info = 8 + 10  # STREAMINFO's last 8 bytes of fields hold the 36-bit sample count
    fields = int.from_bytes(data[info:info + 8], "big") & ~((1 << 36) - 1)  # 0: unknown
    data[info:info + 8] = fields.to_bytes(8, "big")
    samples, rate = decode_audio(bytes(data), "auto", None, max_seconds=LIMIT_S)
    np.testing.assert_allclose(samples, clip, atol=1 / 32768)
    with pytest.raises(AudioTooLong, match="runs longer than the 2 s accepted"):
        decode_audio(bytes(data), "auto", None, max_seconds=2.0)


def test_clips_within_the_limit_decode_as_before():
    clip = (0.3 * np.sin(np.arange(48_000 * 3) / 7.0)).astype(np.float32)
    for fmt, subtype in (("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("WAV", "FLOAT")):
        buffer = io.BytesIO()
        sf.write(buffer, clip, 48_000, format=fmt, subtype=subtype)
        samples, rate = decode_audio(buffer.getvalue(), "auto", None, max_seconds=3.0)  # exactly the limit
        assert rate == 48_000 and samples.shape == clip.shape and samples.flags.owndata
        np.testing.assert_allclose(samples, clip, atol=1 / 32768)
        with pytest.raises(AudioTooLong, match="3.0 s is longer than the 2.9 s accepted"):
            decode_audio(buffer.getvalue(), "auto", None, max_seconds=2.9)


MEASURE = """
import json, sys
import sphn, soundfile  # imported before the first reading: their code is not a bomb's cost
from csm_core.audio_io import AudioDecodeError, decode_audio

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

growth = {}
for name, path, encoding, rate in json.loads(sys.argv[1]):
    data = open(path, "rb").read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS (VmHWM) starts again from the RSS now
    before = status("VmRSS")
    try:
        decode_audio(data, encoding, rate, max_seconds=120.0)
        outcome = "decoded"
    except AudioDecodeError as e:
        outcome = str(e)
    growth[name] = (status("VmHWM") - before, outcome)
    del data
print(json.dumps(growth))
"""


def test_a_bomb_costs_at_most_a_few_mb(tmp_path, hour_of_flac):
    """The peak RSS of a fresh process while it refuses each bomb, over its RSS before (the bomb's
    bytes already read): what refusing it cost."""
    files = {"flac": hour_of_flac, "opus": opus_silence(tmp_path, repeats=HOUR_S // 10),
             "pcm_s16le": bytes(2 * 8_000 * HOUR_S)}
    bombs = []
    for name, data in files.items():
        path = tmp_path / f"bomb.{name}"
        path.write_bytes(data)
        encoding = name if name == "pcm_s16le" else "auto"
        bombs.append((name, str(path), encoding, 8_000 if name == "pcm_s16le" else 0))
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(bombs)], capture_output=True, text=True,
                         check=True).stdout
    growth = json.loads(out)
    print("\nbomb peak RSS growth: " + ", ".join(
        f"{name} {grown / 2**20:.1f} MiB" for name, (grown, _) in growth.items()))
    for name, (grown, outcome) in growth.items():
        assert "longer than the 120 s accepted" in outcome, (name, outcome)
        assert grown < 8 * 2**20, (name, grown)


def test_an_opus_head_cut_short_is_refused_before_sphn_reads_it():
    """sphn indexes all 19 bytes of an OpusHead: a shorter one made it panic (pyo3's
    PanicException, a BaseException that went past every `except Exception`)."""
    page = struct.pack("<4sBBqIIIB", b"OggS", 0, 2, 0, 1, 0, 0, 1) + bytes([8]) + b"OpusHead"
    with pytest.raises(AudioDecodeError, match="its OpusHead has 8 bytes, fewer than 19"):
        decode_audio(page, "auto", None, max_seconds=LIMIT_S)


def test_a_panic_in_sphn_is_a_decode_error(tmp_path, monkeypatch):
    class PanicException(BaseException):  # what pyo3 raises for a Rust panic
        pass

    def panics(data):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(sphn, "read_opus_bytes", panics)
    with pytest.raises(AudioDecodeError, match="index out of bounds"):
        decode_audio(opus_silence(tmp_path, repeats=1), "ogg_opus", None, max_seconds=LIMIT_S)
