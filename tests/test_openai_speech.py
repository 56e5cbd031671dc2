"""OpenAI's speech request read into engine parameters: pure functions, no server."""

from dataclasses import replace

import pytest

from server.audio_encoding import OutputEncoding
from server.engine.types import EngineLimits, InvalidRequest, Violation
from server.errors import NotFound
from server.front.voices import OPENAI_VOICES, VoiceLookup
from server.openai_speech import in_api_terms, parse_speech_request
from server.tenants import DEFAULT_TENANT

MODELS = ("csm-1b", "tts-1")
LIMITS = EngineLimits(max_slots=4, max_queue=8, max_seq_len=512, max_text_chars=100, max_context_segments=2,
                      max_speaker_id=3, max_audio_ms=10_000, default_max_audio_ms=4_000, max_context_audio_s=5.0,
                      max_request_id_chars=16)
ONE_SPEAKER = replace(LIMITS, max_speaker_id=1)
SPEAKERS = VoiceLookup(None, LIMITS.max_speaker_id)  # no stored voices: speaker ids and OpenAI's names


def parse(**body):
    return parse_speech_request({"model": "tts-1", "input": "Hi.", "voice": "0", **body}, models=MODELS,
                                limits=LIMITS, request_id="r1", voices=SPEAKERS, tenant=DEFAULT_TENANT)


def test_defaults_are_openais():
    request = parse()
    assert request.response_format.encoding is OutputEncoding.MP3 and request.speed == 1.0
    assert request.stream_format == "audio"
    assert (request.params.text, request.params.speaker, request.params.request_id) == ("Hi.", 0, "r1")
    assert request.params.output_sample_rate == 24_000


def speaker_of(name: str) -> int | None:
    try:
        return SPEAKERS.choose(DEFAULT_TENANT, name).speaker
    except InvalidRequest:
        return None


def test_voices_resolve_to_speakers():
    names = ("0", "3", "4", "alloy", "Nova", "x", "-1", "\u0663", "\uff11", "00")
    assert [speaker_of(v) for v in names] == [0, 3, None, 0, 0, None, None, None, None, 0]  # ASCII digits only
    assert set(OPENAI_VOICES) >= {"alloy", "echo", "shimmer"}
    assert parse(voice={"id": "2"}).params.speaker == 2


def test_extra_fields_reach_the_engine_and_unknown_ones_are_ignored():
    request = parse(seed=7, temperature=0.5, top_k=20, max_audio_ms=3000, speed=1.5, stream_format="sse",
                    instructions="Whisper.", stream=True, response_format="flac")
    params = request.params
    assert (params.seed, params.temperature, params.top_k, params.max_audio_ms) == (7, 0.5, 20, 3000)
    assert request.speed == 1.5 and request.stream_format == "sse"
    assert request.response_format.encoding is OutputEncoding.FLAC


def test_every_violation_is_listed_once():
    with pytest.raises(InvalidRequest) as refused:
        parse_speech_request({"model": "tts-1", "voice": True, "speed": "fast", "response_format": "ogg",
                              "seed": -1, "max_audio_ms": 0}, models=MODELS, limits=ONE_SPEAKER, request_id="r",
                             voices=SPEAKERS, tenant=DEFAULT_TENANT)
    fields = [v.field for v in refused.value.violations]
    assert fields == ["input", "voice", "speed", "response_format", "seed", "max_audio_ms"]


@pytest.mark.parametrize("speed", [0.2, 4.5, float("nan")])
def test_speed_range(speed):
    with pytest.raises(InvalidRequest, match="speed"):
        parse(speed=speed)


def test_unknown_model_is_not_found_and_a_non_object_body_is_invalid():
    with pytest.raises(NotFound, match="gpt-9"):
        parse(model="gpt-9")
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_speech_request([1], models=MODELS, limits=ONE_SPEAKER, request_id="r", voices=SPEAKERS, tenant=DEFAULT_TENANT)


def test_the_engines_rules_come_back_with_this_apis_own_violations():
    with pytest.raises(InvalidRequest) as refused:
        parse(input="x" * 101, top_k=0, speed=9.0, temperature=7.0, max_audio_ms=20_000)
    fields = {v.field: v.description for v in refused.value.violations}
    assert set(fields) == {"speed", "input", "temperature", "top_k", "max_audio_ms"}
    assert "at most 100" in fields["input"]
    with pytest.raises(InvalidRequest, match="x-request-id"):
        parse_speech_request({"model": "tts-1", "input": "Hi.", "voice": "0"}, models=MODELS, limits=LIMITS,
                             request_id="r" * 17, voices=SPEAKERS, tenant=DEFAULT_TENANT)


def test_engine_field_paths_are_renamed_for_this_api():
    renamed = in_api_terms(InvalidRequest([Violation("text", "too long"), Violation("sampling.top_k", "0")]))
    assert [v.field for v in renamed.violations] == ["input", "top_k"]


def test_stream_chooses_one_exact_file_and_flac_is_whole_by_default():
    assert not parse().whole and not parse(response_format="wav").whole  # OpenAI's: audio as it comes
    assert parse(response_format="flac").whole  # FLAC's header needs the total length
    assert parse(response_format="wav", stream=False).whole
    assert not parse(response_format="flac", stream=True).whole
    assert not parse(response_format="flac", stream_format="sse").whole  # events always stream
    with pytest.raises(InvalidRequest) as refused:
        parse(stream="no")
    assert [v.field for v in refused.value.violations] == ["stream"]


def test_input_keeps_openais_4096_characters_and_the_servers_own_limit():
    roomy = replace(LIMITS, max_text_chars=10_000)
    with pytest.raises(InvalidRequest) as refused:
        parse_speech_request({"model": "tts-1", "input": "x" * 4097, "voice": "0"}, models=MODELS, limits=roomy,
                             request_id="r", voices=SPEAKERS, tenant=DEFAULT_TENANT)
    assert list(refused.value.violations) == [Violation("input", "4097 characters; at most 4096 are accepted")]
    with pytest.raises(InvalidRequest) as refused:
        parse(input="x" * 101)  # below 4096, above this server's max_text_chars
    assert [v.field for v in refused.value.violations] == ["input"] and "at most 100" in str(refused.value)
