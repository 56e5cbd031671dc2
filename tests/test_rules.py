"""The request rules (server/engine/rules.py): one table, every violation reported together. Torch-free."""

import dataclasses
import numpy as np

from csm_core.audio_io import AudioTooLong
from server.engine import rules
from server.engine.types import ContextSegment, EncodedAudio, EngineLimits, SynthesisParams, Violation

LIMITS = EngineLimits(max_slots=4, max_queue=8, max_seq_len=512, max_text_chars=100, max_context_segments=2,
                      max_speaker_id=3, max_audio_ms=10_000, default_max_audio_ms=4_000, max_context_audio_s=5.0,
                      max_request_id_chars=16)


def fields(params: SynthesisParams) -> dict[str, str]:
    return {v.field: v.description for v in rules.check(params, LIMITS)}


def test_a_valid_request_has_no_violation():
    seg = ContextSegment(1, "before", EncodedAudio(b"\0\0" * 16_000, "pcm_s16le", 16_000))
    assert fields(SynthesisParams(text="Hello.", speaker=3, context=(seg,), request_id="call-7")) == {}


def test_every_problem_of_a_request_comes_back_at_once():
    bad = SynthesisParams(
        text="x" * 101, speaker=4, temperature=9.0, top_k=0, max_audio_ms=20_000, output_encoding="7",
        request_id="a\nb", context=(
            ContextSegment(9, " ", EncodedAudio(b"", "pcm_f32le", 0)),
            ContextSegment(0, "fine", EncodedAudio(b"RIFF", "11")),
        ))
    got = fields(bad)
    assert set(got) == {
        "request_id", "text", "speaker", "sampling.temperature", "sampling.top_k", "max_audio_ms",
        "output.encoding", "context[0].text", "context[0].speaker", "context[0].audio",
        "context[0].audio.sample_rate", "context[1].audio.encoding"}
    assert "at most 100" in got["text"] and "[0, 3]" in got["speaker"] and "control characters" in got["request_id"]
    assert "PCM_S16LE" in got["output.encoding"]  # says what would be accepted


def test_output_rate_depends_on_the_encoding():
    assert "24000, 48000" in fields(SynthesisParams(text="Hi", output_encoding="ogg_opus",
                                                      output_sample_rate=16_000))["output.sample_rate"]
    assert fields(SynthesisParams(text="Hi", output_encoding="wav", output_sample_rate=16_000)) == {}


def test_sizes_are_checked_without_decoding_and_segments_past_the_limit_are_not_inspected():
    long_raw = EncodedAudio(b"\0\0" * 16_000 * 6, "pcm_s16le", 16_000)  # 6 s of raw PCM, known from its size
    three = tuple(ContextSegment(0, "t", long_raw) for _ in range(3))
    got = fields(SynthesisParams(text="Hi", context=three))
    assert set(got) == {"context", "context[0].audio", "context[1].audio"}
    assert "6.0 s is longer than the 5 s" in got["context[0].audio"]
    arrays = (ContextSegment(0, "t", np.zeros((2, 10), np.float32)),
              ContextSegment(0, "t", np.zeros(6 * 8000, np.float32), sample_rate=8000))
    got = fields(SynthesisParams(text="Hi", context=arrays))
    assert "mono" in got["context[0].audio"] and "6.0 s" in got["context[1].audio"]


def test_checks_after_preparation():
    assert rules.check_prompt_fits(500, 12, LIMITS) is None
    v = rules.check_prompt_fits(500, 13, LIMITS)
    assert v.field == "max_audio_ms" and "at most 960" in v.description
    assert "shorten the context" in rules.check_prompt_fits(512, 1, LIMITS).description
    assert rules.context_audio_room_s(LIMITS) == LIMITS.max_seq_len * 0.08
    too_long = rules.clip_too_long("context[2].audio", AudioTooLong(5.0, 5.5), LIMITS)
    assert too_long == Violation("context[2].audio", "5.5 s is longer than the 5 s accepted")
    stopped = rules.clip_too_long("context[2].audio", AudioTooLong(5.0, None), LIMITS)
    assert stopped.description == "runs longer than the 5 s accepted"
    hour = rules.clip_too_long("context[2].audio", AudioTooLong(1.5, 3600.0), LIMITS)
    assert hour.description == "3600.0 s is longer than the 5 s accepted"  # its own limit, though less room was left
    for seconds in (None, 4.0):  # stopped by the room left, not by the clip's own limit
        assert rules.clip_too_long("context[2].audio", AudioTooLong(1.5, seconds), LIMITS) is None
    assert rules.max_frames(SynthesisParams(text="Hi"), LIMITS) == 28  # 2000 + 2 x 150 ms -> 2240 ms / 80 ms
    assert rules.max_frames(SynthesisParams(text="x" * 200), LIMITS) == 50  # at most default_max_audio_ms: 4000 / 80
    assert rules.max_frames(SynthesisParams(text="Hi", max_audio_ms=250), LIMITS) == 3  # an upper bound


def test_the_default_length_grows_with_the_text_from_a_floor_to_a_ceiling():
    roomy = dataclasses.replace(LIMITS, default_max_audio_ms=20_000)
    assert rules.default_audio_ms("Hello from CSM.", roomy) == 4240  # 2000 + 15 x 150, whole 80 ms frames
    assert rules.default_audio_ms("  Hi  ", LIMITS) == rules.default_audio_ms("Hi", LIMITS)  # spaces around do not count
    assert rules.default_audio_ms("", LIMITS) == rules.DEFAULT_FLOOR_MS
    assert rules.default_audio_ms("x" * 10_000, LIMITS) == LIMITS.default_max_audio_ms
    lengths = [rules.default_audio_ms("x" * n, LIMITS) for n in range(0, 40)]
    assert lengths == sorted(lengths)
    assert rules.check(SynthesisParams(text="Hi"), LIMITS) == []  # the default is always in range
