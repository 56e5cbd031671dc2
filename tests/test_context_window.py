"""A conversation's context window (torch-free): what the slot holds (kv_len) after every kind
of change, dropping whole old turns, cutting a turn at what was heard. Frames are lists here."""

import pytest

from server.engine.context_window import ContextSegment, ContextWindow, DoesNotFit, SegmentKind

EOS = ["E"]


def window() -> ContextWindow:
    return ContextWindow(EOS, lambda parts: [x for p in parts for x in p])


def seg(turn: str, kind: SegmentKind, text: int, audio: int | None) -> ContextSegment:
    frames = [f"{turn}:t"] * text + ([f"{turn}:a"] * audio + EOS if audio is not None else [])
    return ContextSegment(turn, kind, frames, text)


def spoken(w: ContextWindow, turn: str, text: int, frames: int, fed: int) -> None:
    """A piece generated after the context: its prompt was the tail + its text."""
    prompt_end = w.length + text
    w.add_spoken(turn, [f"{turn}:t"] * text, [f"{turn}:a"] * frames, fed, computed=prompt_end + fed)


def test_kv_len_follows_each_generated_piece():
    w = window()
    w.append(seg("voice", SegmentKind.VOICE, 5, 10))  # 16 positions
    assert w.tail() == w.segments[0].frames and w.kv_len == 0
    spoken(w, "t1", text=4, frames=6, fed=6)  # ended by EOS: every frame went back through the model
    assert w.length == 16 + 4 + 6 + 1 and w.kv_len == 26  # its end-of-audio frame is not in the slot yet
    assert w.tail() == EOS
    spoken(w, "t2", text=3, frames=5, fed=4)  # ended by length: the last frame was never fed
    assert w.kv_len == 27 + 3 + 4 and w.tail() == ["t2:a", "E"]
    w.append(seg("u1", SegmentKind.CONTEXT, 2, 3))
    assert w.tail() == ["t2:a", "E", "u1:t", "u1:t", "u1:a", "u1:a", "u1:a", "E"]
    assert w.state().turns == 3 and w.state().positions == w.length


def test_a_piece_that_failed_keeps_only_the_computed_context():
    w = window()
    w.append(seg("voice", SegmentKind.VOICE, 5, 10))
    w.computed(9)  # prefill stopped inside the voice
    assert w.kv_len == 9
    w.computed(100)
    assert w.kv_len == 16
    w.slot_lost()
    assert w.kv_len == 0 and len(w.tail()) == 16


def test_fit_drops_oldest_whole_turns_with_headroom_and_never_the_voice():
    w = window()
    w.append(seg("voice", SegmentKind.VOICE, 4, 5))  # 10
    for t in ("a", "b", "c"):
        w.append(seg(t, SegmentKind.CONTEXT, 5, 4))  # 10 each
    w.kv_len = w.length  # 40, all in the slot
    assert w.fit(need=10, max_len=50, headroom=5) == ()
    dropped = w.fit(need=20, max_len=50, headroom=5)  # 60 > 50: drop until 45 or less
    assert dropped == ("a", "b") and w.length == 20 and [s.turn_id for s in w.segments] == ["voice", "c"]
    assert w.kv_len == 10  # everything after the voice moved
    with pytest.raises(DoesNotFit):
        w.fit(need=45, max_len=50, headroom=5)


def test_fit_spares_the_turn_being_spoken_until_nothing_else_is_left():
    w = window()
    w.append(seg("voice", SegmentKind.VOICE, 4, 5))  # 10
    w.append(seg("old", SegmentKind.CONTEXT, 5, 4))  # 10
    for _ in range(3):
        spoken(w, "long", text=3, frames=6, fed=6)  # 10 each
    assert w.fit(need=10, max_len=50, headroom=0, keep_turn="long") == ("old",) and w.length == 40
    dropped = w.fit(need=25, max_len=50, headroom=0, keep_turn="long")  # only the long turn's own pieces left
    assert dropped == () and w.length == 20 and [s.turn_id for s in w.segments] == ["voice", "long"]


def test_cut_turn_keeps_what_was_heard_over_its_pieces():
    w = window()
    w.append(seg("voice", SegmentKind.VOICE, 2, 2))  # 5
    spoken(w, "r", text=2, frames=4, fed=4)  # positions 5..11
    spoken(w, "r", text=2, frames=4, fed=3)  # positions 12..18
    w.cut_turn("r", heard_frames=6)  # all of piece 1, 2 frames of piece 2
    assert [s.audio_frames for s in w.segments[1:]] == [4, 2]
    assert w.segments[2].frames == ["r:t", "r:t", "r:a", "r:a", "E"]
    assert w.kv_len == 12 + 2 + 2 and w.tail() == EOS
    w.cut_turn("r", heard_frames=1)  # now inside piece 1: piece 2 goes
    assert [s.audio_frames for s in w.segments[1:]] == [1] and w.kv_len == 5 + 2 + 1
    w.cut_turn("r", heard_frames=None)
    assert w.length == 5 + 2 + 1 + 1


def test_remove_turn_restores_the_context_before_it():
    w = window()
    w.append(seg("voice", SegmentKind.VOICE, 2, 2))
    spoken(w, "ok", text=2, frames=2, fed=2)
    assert (w.length, w.kv_len) == (10, 9)
    spoken(w, "bad", text=2, frames=3, fed=3)
    w.remove_turn("bad")
    assert w.length == 10 and w.kv_len == 10  # ok's end-of-audio frame went in with bad's prompt
