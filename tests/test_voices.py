"""The voice registry and its directory, without a model: a stand-in encoder makes codes from
the audio, the tokenizer is the real offline one. Two registries on one directory stand for
two replicas; a new registry on an old directory stands for a restart."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

from csm_core.constants import FRAME_SAMPLES, NUM_CODEBOOKS, SAMPLE_RATE
from csm_core.text import load_tokenizer
from server.engine.types import ContextSegment, EngineLimits, InvalidRequest, SynthesisParams, Violation
from server.voices.config import VoicesConfig
from server.voices.registry import Clip, NewSegment, VoiceLimits, VoiceRegistry
from server.voices.store import STALE_TEMP_S, SUFFIX, VoiceStore
from server.voices.synthesis import blame_request_fields, with_voice
from server.voices.types import (
    VoiceExists, VoiceNotFound, VoiceQuotaExceeded, VoiceUnusable, content_hash, segment_prompt_frames,
)

TOKENIZER = load_tokenizer("offline")
ENGINE_LIMITS = EngineLimits(max_slots=4, max_queue=16, max_seq_len=512, max_text_chars=200,
                             max_context_segments=4, max_speaker_id=3, max_audio_ms=20_000,
                             default_max_audio_ms=8_000, max_context_audio_s=10.0, max_request_id_chars=128)


class StandInEncoder:
    """Codes that depend on every sample (so other audio gives other codes); counts its calls."""

    def __init__(self, codec: str = "stand-in:1"):
        self.codec = codec
        self.calls = 0

    def encode(self, clips):
        self.calls += 1
        out = []
        for clip in clips:
            frames = math.ceil(math.ceil(len(clip.samples) * SAMPLE_RATE / clip.sample_rate) / FRAME_SAMPLES)
            level = int(abs(clip.samples).sum() * 1000) % 1000
            out.append((np.arange(NUM_CODEBOOKS * frames).reshape(NUM_CODEBOOKS, frames) + level) % 2048)
        return out


def registry(directory, encoder=None, **config) -> VoiceRegistry:
    cfg = VoicesConfig(directory=str(directory), **config)
    return VoiceRegistry(VoiceStore(cfg.path), VoiceLimits.for_engine(ENGINE_LIMITS, cfg),
                         encoder or StandInEncoder(), TOKENIZER)


def clip(seconds: float = 1.0, rate: int = 16_000, tone: float = 5.0) -> Clip:
    t = np.arange(int(seconds * rate), dtype=np.float32)
    return Clip(0.3 * np.sin(t / tone).astype(np.float32), rate)


def segments(n: int = 1, seconds: float = 1.0, tone: float = 5.0) -> list[NewSegment]:
    return [NewSegment(speaker=i % 2, text=f"Segment number {i}.", audio=clip(seconds, tone=tone))
            for i in range(n)]


def test_create_stores_codes_once_and_get_returns_them(tmp_path):
    encoder = StandInEncoder()
    reg = registry(tmp_path, encoder)
    voice = reg.create("alice", segments(2), description="two takes")
    assert encoder.calls == 1
    assert (tmp_path / f"alice{SUFFIX}").stat().st_size == voice.size_bytes > 0
    frames = math.ceil(math.ceil(16_000 * SAMPLE_RATE / 16_000) / FRAME_SAMPLES)
    for i, seg in enumerate(voice.segments):
        assert seg.codes.dtype == np.int16 and seg.codes.shape == (NUM_CODEBOOKS, frames)
        assert not seg.codes.flags.writeable
        assert seg.prompt_frames == segment_prompt_frames(len(TOKENIZER.encode_turn(i % 2, f"Segment number {i}.")),
                                                          frames)
    assert voice.content_hash == content_hash((s.speaker, s.text, s.codes) for s in voice.segments)
    got = reg.get("alice")
    assert got.content_hash == voice.content_hash and got.description == "two takes"
    assert [s.text for s in got.segments] == ["Segment number 0.", "Segment number 1."]
    assert all(np.array_equal(a.codes, b.codes) for a, b in zip(got.segments, voice.segments))
    assert encoder.calls == 1


def test_a_restarted_server_lists_and_uses_voices_without_encoding(tmp_path):
    created = registry(tmp_path).create("bob", segments(1))
    encoder = StandInEncoder()
    restarted = registry(tmp_path, encoder)
    assert [v.name for v in restarted.page().voices] == ["bob"]
    voice = restarted.resolve("bob")
    assert voice.content_hash == created.content_hash and voice.created_at == created.created_at
    assert encoder.calls == 0


def test_two_replicas_on_one_directory_see_each_others_changes(tmp_path):
    a, b = registry(tmp_path), registry(tmp_path)
    first = a.create("carol", segments(1, tone=5.0))
    assert b.get("carol").content_hash == first.content_hash  # a miss looks at the directory
    with pytest.raises(VoiceExists):
        b.create("carol", segments(1))
    assert b.delete("carol")
    with pytest.raises(VoiceNotFound):
        a.get("carol")  # a's cached copy is not served after the file is gone
    second = b.create("carol", segments(1, tone=9.0))
    assert second.content_hash != first.content_hash
    assert a.get("carol").content_hash == second.content_hash


def test_publishing_never_replaces_a_voice(tmp_path):
    store = VoiceStore(tmp_path)
    reg = registry(tmp_path)
    voice = reg.create("dave", segments(1))
    with pytest.raises(VoiceExists):  # the create-if-absent of the last step, past the early check
        store.create(voice, b"another replica's bytes")
    assert reg.get("dave").content_hash == voice.content_hash
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_crash_mid_write_leaves_no_voice(tmp_path):
    reg = registry(tmp_path)
    good = reg.create("erin", segments(1))
    data = (tmp_path / f"erin{SUFFIX}").read_bytes()
    stale = tmp_path / ".frank.0123456789abcdef.tmp"  # a write that died halfway
    stale.write_bytes(data[: len(data) // 2])
    fresh = tmp_path / ".gina.fedcba9876543210.tmp"  # a write still in progress elsewhere
    fresh.write_bytes(data[:10])
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    assert [v.name for v in reg.page().voices] == ["erin"]
    with pytest.raises(VoiceNotFound):
        reg.get("frank")
    assert not stale.exists() and fresh.exists()
    assert reg.usage().voices == 1 and reg.usage().bytes == good.size_bytes


def test_a_failed_write_leaves_no_files(tmp_path, monkeypatch):
    reg = registry(tmp_path)

    def disk_error(*_):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "link", disk_error)
    with pytest.raises(OSError):
        reg.create("hank", segments(1))
    assert list(tmp_path.iterdir()) == []


def test_limits_on_count_and_bytes(tmp_path):
    reg = registry(tmp_path, max_voices=2)
    reg.create("v1", segments(1))
    registry(tmp_path).create("v2", segments(1))  # another replica's voice counts too
    encoder = StandInEncoder()
    full = registry(tmp_path, encoder, max_voices=2)
    with pytest.raises(VoiceQuotaExceeded) as exc:
        full.create("v3", segments(1))
    assert exc.value.subject == "voices" and encoder.calls == 0

    size = reg.get("v1").size_bytes
    tight = registry(tmp_path, max_bytes=2 * size + size // 2)
    with pytest.raises(VoiceQuotaExceeded) as exc:
        tight.create("v3", segments(1))
    assert exc.value.subject == "bytes"
    assert tight.usage().voices == 2


@pytest.mark.parametrize("name", ["", "Alice", "a b", "-lead", "_lead", "a" * 65, "../x", "x.y", "é"])
def test_bad_names_are_refused(tmp_path, name):
    encoder = StandInEncoder()
    with pytest.raises(InvalidRequest) as exc:
        registry(tmp_path, encoder).create(name, segments(1))
    assert [v.field for v in exc.value.violations] == ["name"]
    assert encoder.calls == 0
    with pytest.raises(VoiceNotFound):
        registry(tmp_path).get(name)
    assert not registry(tmp_path).delete(name)


def test_good_names(tmp_path):
    reg = registry(tmp_path)
    for name in ("a", "0", "narrator-2", "en_us-female-1", "a" * 64):
        assert reg.create(name, segments(1)).name == name


def test_bad_segments_name_every_problem_and_encode_nothing(tmp_path):
    encoder = StandInEncoder()
    reg = registry(tmp_path, encoder)
    bad = [
        NewSegment(speaker=0, text="  ", audio=clip()),
        NewSegment(speaker=9, text="Fine.", audio=clip()),
        NewSegment(speaker=0, text="No audio.", audio=None),
        NewSegment(speaker=0, text="Too long.", audio=clip(seconds=11)),
    ]
    with pytest.raises(InvalidRequest) as exc:
        reg.create("ivy", bad, description="x" * 1001)
    assert {v.field for v in exc.value.violations} == {
        "description", "segments[0].text", "segments[1].speaker", "segments[2].audio", "segments[3].audio"}
    with pytest.raises(InvalidRequest) as exc:
        reg.create("ivy", [])
    assert [v.field for v in exc.value.violations] == ["segments"]
    with pytest.raises(InvalidRequest) as exc:
        reg.create("ivy", segments(ENGINE_LIMITS.max_context_segments + 1))
    assert [v.field for v in exc.value.violations] == ["segments"]
    assert encoder.calls == 0 and list(tmp_path.iterdir()) == []


def test_a_voice_must_leave_room_to_speak(tmp_path):
    reg = registry(tmp_path)
    room = 64 + ENGINE_LIMITS.default_max_audio_ms // 80
    assert reg.limits.max_prompt_frames == ENGINE_LIMITS.max_seq_len - room
    with pytest.raises(InvalidRequest) as exc:  # 4 x 9 s of audio: ~4 x 113 frames
        reg.create("jack", segments(4, seconds=9.0))
    assert [v.field for v in exc.value.violations] == ["segments"]
    assert "room to speak" in exc.value.violations[0].description


def test_deleting_a_voice_in_use_keeps_the_users_codes(tmp_path):
    reg = registry(tmp_path)
    voice = reg.resolve(reg.create("kate", segments(2)).name)
    params = with_voice(SynthesisParams(text="Hi.", context=(ContextSegment(speaker=1, text="Inline."),)), voice)
    before = [s.codes.copy() for s in params.context[:2]]
    assert reg.delete("kate")
    assert not reg.delete("kate")
    with pytest.raises(VoiceNotFound):
        reg.resolve("kate")
    assert [s.text for s in params.context] == ["Segment number 0.", "Segment number 1.", "Inline."]
    assert all(np.array_equal(a, s.codes) for a, s in zip(before, params.context))
    assert params.context[0].audio is None and params.context[2].codes is None


def test_an_unreadable_file_is_reported_not_served(tmp_path):
    reg = registry(tmp_path)
    reg.create("liam", segments(1))
    (tmp_path / f"mona{SUFFIX}").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(VoiceUnusable):
        reg.get("mona")
    assert [v.name for v in reg.page().voices] == ["liam"]
    assert reg.usage().voices == 2  # it still takes room until deleted
    assert reg.delete("mona")


def test_a_voice_of_another_codec_is_listed_but_not_used(tmp_path):
    registry(tmp_path, StandInEncoder("stand-in:1")).create("nina", segments(1))
    other = registry(tmp_path, StandInEncoder("stand-in:2"))
    assert other.get("nina").codec == "stand-in:1"
    with pytest.raises(VoiceUnusable, match="stand-in:2"):
        other.resolve("nina")


def test_pages_in_name_order(tmp_path):
    reg = registry(tmp_path)
    for name in ("c", "a", "b"):
        reg.create(name, segments(1))
    first = reg.page(limit=2)
    assert [v.name for v in first.voices] == ["a", "b"] and first.next_after == "b"
    last = reg.page(after=first.next_after, limit=2)
    assert [v.name for v in last.voices] == ["c"] and last.next_after == ""


def test_engine_violations_name_the_requests_own_fields(tmp_path):
    voice = registry(tmp_path).create("omar", segments(2))
    error = InvalidRequest([Violation("context[1].speaker", "bad"), Violation("context[3].text", "empty"),
                            Violation("context", "5 segments; at most 4"), Violation("text", "empty")])
    fields = [v.field for v in blame_request_fields(error, voice).violations]
    assert fields == ["voice", "context[1].text", "context", "text"]
