"""Streamed text cut into pieces at sentence ends (torch-free)."""

from server.converse.sentences import SentenceSplitter


def pieces(chunks: list[str], min_chars: int = 10) -> list[str]:
    s = SentenceSplitter(min_chars)
    out = [p for c in chunks for p in s.feed(c)]
    return out + [p for p in [s.flush()] if p]


def test_a_sentence_is_complete_once_the_space_after_it_arrives():
    s = SentenceSplitter()
    assert s.feed("Hello there, friend.") == []
    assert s.feed(" How") == ["Hello there, friend."]
    assert s.feed(" are you?") == [] and s.flush() == "How are you?"


def test_llm_tokens_decimals_abbreviations_and_quotes():
    tokens = ["It", " costs", " 3", ".", "5", " dollars", ",", " said", " Dr", ". Smith", ".", " \"Really?\"",
              " she", " asked", "!", " "]
    # "Dr." is a sentence end to a splitter that knows no abbreviations: a piece boundary, no harm
    assert pieces(tokens, min_chars=5) == ["It costs 3.5 dollars, said Dr.", "Smith.", "\"Really?\"", "she asked!"]


def test_short_sentences_are_joined_and_flush_cuts_anything():
    assert pieces(["Yes. ", "I think so. ", "Ok."]) == ["Yes. I think so.", "Ok."]
    s = SentenceSplitter()
    assert s.feed("Well") == [] and s.flush() == "Well" and s.flush() is None
    assert pieces(["你好。", "今天天气很好。"], min_chars=2) == ["你好。", "今天天气很好。"]
