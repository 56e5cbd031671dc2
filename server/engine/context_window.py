"""A conversation's context as the engine keeps it: segments of frames (codes and text tokens,
never audio), and how many of its leading positions the conversation's slot holds as KV rows.
Torch-free: frames are opaque (anything with len() and slicing; the engine uses
server.engine.sessions.Frames), joined by the `cat` it is given.

    context = [voice segments][turn][turn]...        positions 0 .. length
    kv_len  = leading positions whose KV rows in the slot are exactly these frames

Every change keeps `kv_len` true by lowering it to the first position that changed: a turn
appended after a generated one starts with the previous turn's end-of-audio frame, which the
slot does not hold yet; dropping old turns shifts everything after the voice; cutting a turn
at what was heard removes its tail. The next turn's prompt is then "what the slot lacks":
positions [kv_len, length) followed by its own text.

A segment is [text positions | audio frames | one all-zero end-of-audio frame], as a context
segment is framed (csm_core/framing.py); a generated piece keeps its codes and gets the
end-of-audio frame after them whether it ended by EOS, by length or by an interrupt.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from server.engine.types import ContextState


class Frames(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, s: slice) -> Any: ...


class SegmentKind(enum.Enum):
    VOICE = "voice"  # the voice's segments: never dropped
    CONTEXT = "context"  # a context turn (what the user said)
    SPOKEN = "spoken"  # one generated piece of a speak turn


@dataclass(slots=True)
class ContextSegment:
    turn_id: str
    kind: SegmentKind
    frames: Frames  # every position: text first, then audio frames and the end-of-audio frame
    text_len: int

    @property
    def audio_frames(self) -> int:
        """Audio frames, the end-of-audio frame not counted."""
        return max(0, len(self.frames) - self.text_len - 1)


class DoesNotFit(Exception):
    """Even with every older turn dropped, the context and the turn exceed the window."""


class ContextWindow:
    def __init__(self, eos: Frames, cat: Callable[[list[Frames]], Frames]):
        self._eos = eos  # one end-of-audio frame
        self._cat = cat
        self.segments: list[ContextSegment] = []
        self.kv_len = 0

    @property
    def length(self) -> int:
        return sum(len(s.frames) for s in self.segments)

    @property
    def voice_length(self) -> int:
        return sum(len(s.frames) for s in self.segments if s.kind is SegmentKind.VOICE)

    def state(self, dropped: tuple[str, ...] = ()) -> ContextState:
        turns = {s.turn_id for s in self.segments if s.kind is not SegmentKind.VOICE}
        return ContextState(self.length, len(turns), dropped)

    def tail(self) -> Frames | None:
        """Frames of positions [kv_len, length): what the slot lacks; None when nothing."""
        parts, pos = [], 0
        for s in self.segments:
            end = pos + len(s.frames)
            if end > self.kv_len:
                parts.append(s.frames[max(0, self.kv_len - pos):])
            pos = end
        return self._cat(parts) if parts else None

    # -- changes -----------------------------------------------------------------------
    def append(self, segment: ContextSegment) -> None:
        self.segments.append(segment)

    def add_spoken(self, turn_id: str, text: Frames, audio: Frames, fed: int, computed: int) -> None:
        """A generated piece ended: its text, the audio frames it keeps, then end-of-audio.
        `fed`: how many of those frames went back through the model (their rows are in the
        slot); `computed`: the slot's rows end there (absolute)."""
        start = self.length
        frames = self._cat([text, audio, self._eos])
        self.segments.append(ContextSegment(turn_id, SegmentKind.SPOKEN, frames, len(text)))
        self.kv_len = min(computed, start + len(text) + min(fed, len(audio)))

    def computed(self, end: int) -> None:
        """The slot's rows end at `end` (a turn failed or was dropped before it generated):
        only context positions before it stay."""
        self.kv_len = min(self.length, end)

    def slot_lost(self) -> None:
        self.kv_len = 0

    def fit(self, need: int, max_len: int, headroom: int, keep_turn: str | None = None) -> tuple[str, ...]:
        """Makes room for `need` more positions within max_len. Drops the oldest whole turns
        (never the voice, never `keep_turn`, the turn being spoken) until `headroom` positions
        are left over, so that the next turns find room without dropping again; if the turns
        before it are not enough, the oldest pieces of `keep_turn` (whole segments). Returns the
        turns dropped whole. Raises DoesNotFit when the voice and the turn alone exceed max_len."""
        if self.length + need <= max_len:
            return ()
        dropped: list[str] = []
        first_changed = self.length
        older = [s.turn_id for s in self.segments if s.kind is not SegmentKind.VOICE and s.turn_id != keep_turn]
        for turn in dict.fromkeys(older):  # oldest first
            if self.length + need + headroom <= max_len:
                break
            first_changed = min(first_changed, self._remove(lambda s, t=turn: s.turn_id == t))
            dropped.append(turn)
        while self.length + need > max_len:
            pieces = [s for s in self.segments if s.turn_id == keep_turn and s.kind is SegmentKind.SPOKEN]
            if not pieces:
                raise DoesNotFit(f"the voice takes {self.voice_length} positions and the turn needs {need} "
                                 f"more: the window is {max_len}")
            first_changed = min(first_changed, self._remove(lambda s, first=pieces[0]: s is first))
        self.kv_len = min(self.kv_len, first_changed)
        return tuple(dropped)

    def _remove(self, which: Callable[[ContextSegment], bool]) -> int:
        """Removes the segments `which` selects; returns the position of the first one."""
        pos, first, kept = 0, self.length, []
        for s in self.segments:
            if which(s):
                first = min(first, pos)
            else:
                kept.append(s)
            pos += len(s.frames)
        self.segments = kept
        return first

    def cut_turn(self, turn_id: str, heard_frames: int | None) -> None:
        """Keeps the first `heard_frames` audio frames of a speak turn (over its pieces, in
        order) and its text; later pieces go. None: everything generated stays."""
        if heard_frames is None:
            return
        pos, left = 0, heard_frames
        for i, s in enumerate(self.segments):
            if s.turn_id == turn_id and s.kind is SegmentKind.SPOKEN:
                if left < s.audio_frames:
                    cut = s.text_len + left
                    s.frames = self._cat([s.frames[:cut], self._eos])
                    self.segments[i + 1:] = [t for t in self.segments[i + 1:] if t.turn_id != turn_id]
                    self.kv_len = min(self.kv_len, pos + cut)
                    return
                left -= s.audio_frames
            pos += len(s.frames)

    def remove_turn(self, turn_id: str) -> None:
        """Takes a failed turn's pieces out (the context as it was before the turn)."""
        first = self._remove(lambda s: s.turn_id == turn_id and s.kind is not SegmentKind.VOICE)
        self.kv_len = min(self.kv_len, first)
