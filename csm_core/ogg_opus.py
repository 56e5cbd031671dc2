"""How long an Ogg/Opus stream is, from its packets, without decoding it. Torch-free, numpy-free.

Context audio in Ogg/Opus is decoded by sphn (csm_core/audio_io.py), which reads the Ogg pages
in order (the Rust `ogg` crate: each page follows the last one, bytes between pages skipped up
to the next capture pattern "OggS"), glues packets across pages per logical stream, skips
OpusTags, opens its decoder at the OpusHead and decodes every other packet whole, with no
pre-skip and no end trimming. Its output is therefore exactly the sum of the packets' sample
counts, and each packet says its count in its first byte or two (RFC 6716, section 3.1). This
module walks the same pages the same way and adds those counts, stopping once they pass a
limit: a stream of an hour of silence is refused after reading its first pages, before a
decoder allocates anything. Granule positions are not used: they are the encoder's claim, the
packets are what a decoder makes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OPUS_RATE = 48_000  # Opus decodes at 48 kHz here, whatever rate went into the encoder
_PAGE = struct.Struct("<4sBBqIIIB")  # capture pattern, version, flags, granule, serial, sequence, CRC, segments
_CONTINUED = 0x01  # page flag: its first packet continues the last packet of the page before
_OPUS_HEAD = b"OpusHead"
_OPUS_TAGS = b"OpusTags"
_HEAD_CHANNELS = 9  # byte of OpusHead holding the channel count
_HEAD_SIZE = 19  # an OpusHead's fields (RFC 7845, 5.1): sphn reads them all, and panics on a shorter one
MAX_IDLE = 1024  # pages and packets without audio a stream may hold (headers, tags, empty pages)
_PREFIX = _HEAD_SIZE  # bytes kept of each packet: its magic, its TOC byte and frame count, an OpusHead


@dataclass(slots=True, frozen=True)
class OpusLength:
    channels: int  # from the OpusHead; 0 when there is none (a decoder refuses such a stream)
    samples: int  # per channel at 48 kHz, as a decoder makes them; once past `stop_after`, a lower bound
    complete: bool  # False: the count stopped early, past `stop_after`


def packet_samples(packet: bytes) -> int:
    """Samples per channel at 48 kHz that one Opus packet decodes to; 0 for a packet a decoder
    refuses (empty, no frame count, more than 120 ms). libopus's opus_packet_get_nb_samples."""
    if not packet:
        return 0
    toc = packet[0]
    if toc & 0x80:  # CELT only: 2.5, 5, 10 or 20 ms
        per_frame = (OPUS_RATE << ((toc >> 3) & 0x3)) // 400
    elif toc & 0x60 == 0x60:  # hybrid: 10 or 20 ms
        per_frame = OPUS_RATE // 50 if toc & 0x08 else OPUS_RATE // 100
    else:  # SILK only: 10, 20, 40 or 60 ms
        size = (toc >> 3) & 0x3
        per_frame = OPUS_RATE * 60 // 1000 if size == 3 else (OPUS_RATE << size) // 100
    code = toc & 0x3
    if code == 0:
        frames = 1
    elif code != 3:
        frames = 2
    elif len(packet) < 2:
        return 0
    else:
        frames = packet[1] & 0x3F
    samples = frames * per_frame
    return 0 if samples * 25 > OPUS_RATE * 3 else samples


def opus_length(data: bytes, stop_after: float = float("inf")) -> OpusLength:
    """The channel count and the samples a decoder makes of this Ogg/Opus stream, counted from
    its packets; the count stops once it passes `stop_after` samples. ValueError for a stream a
    decoder refuses (a packet that is not Opus, an OpusHead cut short), or one padded with more
    than MAX_IDLE pages and packets that carry no audio: the work is bounded by the audio, not by
    the size of the bytes."""
    channels = samples = idle = 0
    partial: dict[int, bytes] = {}  # logical stream -> the first bytes of its packet still open
    pos = 0
    while samples <= stop_after:
        start = data.find(b"OggS", pos)
        if start < 0 or start + _PAGE.size > len(data):
            break
        _, _, flags, _, serial, _, _, count = _PAGE.unpack_from(data, start)
        lacing = data[start + _PAGE.size:start + _PAGE.size + count]
        offset = start + _PAGE.size + count
        if len(lacing) < count:
            break
        before = samples
        prefix = partial.pop(serial, b"") if flags & _CONTINUED else b""
        for size in lacing:
            if len(prefix) < _PREFIX:
                prefix += data[offset:offset + min(size, _PREFIX - len(prefix))]
            offset += size
            if size < 255:  # the packet ends here
                if prefix.startswith(_OPUS_HEAD):
                    if len(prefix) < _HEAD_SIZE:
                        raise ValueError(f"its OpusHead has {len(prefix)} bytes, fewer than {_HEAD_SIZE}")
                    channels = prefix[_HEAD_CHANNELS]
                    idle += 1
                elif prefix.startswith(_OPUS_TAGS):
                    idle += 1
                else:
                    n = packet_samples(prefix)
                    if n == 0:
                        raise ValueError(f"a packet at byte {offset - size} is not an Opus packet")
                    samples += n
                prefix = b""
        if lacing and lacing[-1] == 255:
            partial[serial] = prefix
        if samples == before:
            idle += 1
        if idle > MAX_IDLE:
            raise ValueError(f"more than {MAX_IDLE} pages and packets carry no audio")
        pos = offset
    return OpusLength(channels, samples, samples <= stop_after)
