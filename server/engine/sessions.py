"""Conversations inside the engine, on the engine thread only: a Session per open conversation,
its context a ContextWindow of frames (server/engine/context_window.py), its turns requests
that run in the slot it holds (server/engine/scheduler.py).

    SessionOpen   a session, empty; its VOICE turn follows
    VOICE/CONTEXT prepared segments join the context (older turns dropped first if need be)
    SPEAK         a piece's text, prepared: its prompt is what the slot lacks, then the text,
                  from position kv_len (from 0 without a slot: the context again, from its
                  stored codes, through the prefix cache)
    piece ends    its codes and an end-of-audio frame join the context (EOS, length, interrupt)
    interrupt     the running piece ends; the turn keeps the audio that was heard
    close         the running piece is cancelled, the slot freed
    idle          no turn for conversation_idle_s: the slot goes back, the context stays

A session has at most one request in the engine: its caller sends the next turn (or piece)
once the last one has finished (server/converse/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from csm_core.constants import FRAME_WIDTH, NUM_CODEBOOKS
from csm_core.framing import Prompt, audio_frames
from server.engine import rules
from server.engine.context_window import ContextSegment, ContextWindow, DoesNotFit, SegmentKind
from server.engine.kv_blocks import block_hashes
from server.engine.messages import Prepared, SessionOpen, TurnKind
from server.engine.request import Request
from server.engine.scheduler import Scheduler
from server.engine.types import ContextState, EngineLimits, FinishReason, Violation


@dataclass(frozen=True, slots=True)
class Frames:
    """Backbone positions: tokens and mask [n, 33] (on the CPU)."""

    tokens: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, s: slice) -> Frames:
        return Frames(self.tokens[s], self.mask[s])


def cat(parts: list[Frames]) -> Frames:
    return Frames(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]))


def _eos_frame() -> Frames:
    tokens = torch.zeros(1, FRAME_WIDTH, dtype=torch.long)
    mask = torch.zeros(1, FRAME_WIDTH, dtype=torch.bool)
    mask[:, :NUM_CODEBOOKS] = True  # all-zero codes, audio columns unmasked
    return Frames(tokens, mask)


@dataclass(eq=False)
class Session:
    id: int
    label: str
    context: ContextWindow
    last_active: float
    request: Request | None = None  # its turn (or piece) in the engine
    text: Frames | None = None  # the running piece's text
    frames: list[torch.Tensor] = field(default_factory=list)  # codes [32] the running piece made
    dropped: tuple[str, ...] = ()  # turns its current request dropped


class Sessions:
    def __init__(self, scheduler: Scheduler, limits: EngineLimits, block_positions: int):
        self.scheduler = scheduler
        self.limits = limits
        self.block_positions = block_positions  # the prefix cache's (0: off)
        self.headroom = limits.max_seq_len // 4  # positions left free when old turns are dropped
        self._eos = _eos_frame()
        self._sessions: dict[int, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session: int) -> Session | None:
        return self._sessions.get(session)

    def open(self, msg: SessionOpen, now: float) -> None:
        self._sessions[msg.session] = Session(msg.session, msg.label, ContextWindow(self._eos, cat), now)

    def close(self, session: int) -> Session | None:
        """Forget it (its request must have ended) and free its slot."""
        s = self._sessions.pop(session, None)
        if s is not None:
            self.scheduler.release(session)
        return s

    @property
    def holding_slots(self) -> int:
        return sum(self.scheduler.slot_of(s) is not None for s in self._sessions)

    # -- turns -------------------------------------------------------------------------
    def submitted(self, req: Request, now: float) -> bool:
        """A turn of an open session (False: the session is gone)."""
        s = self._sessions.get(req.session)
        if s is None:
            return False
        s.request, s.last_active, s.dropped = req, now, ()
        return True

    def apply_segments(self, req: Request, msg: Prepared) -> Violation | None:
        """A VOICE or CONTEXT turn, prepared: its segments join the context."""
        s = self._sessions[req.session]
        kind = SegmentKind.VOICE if req.turn.kind is TurnKind.VOICE else SegmentKind.CONTEXT
        total = sum(msg.lengths)
        if kind is SegmentKind.CONTEXT:
            violation = rules.check_turn_fits(total, s.context.voice_length, self.limits)
            if violation is not None:
                return violation
            s.dropped = s.context.fit(total, self.limits.max_seq_len, self.headroom)
        start = 0
        for text_len, n in zip(msg.text_lens, msg.lengths):
            frames = Frames(msg.prompt.tokens[start:start + n], msg.prompt.mask[start:start + n])
            s.context.append(ContextSegment(req.turn.turn_id, kind, frames, text_len))
            start += n
        return None

    def speak_prompt(self, req: Request, msg: Prepared) -> Prompt | Violation:
        """A SPEAK piece, prepared: its prompt (what the slot lacks, then its text), with room
        for its frames made first."""
        s = self._sessions[req.session]
        text = Frames(msg.prompt.tokens, msg.prompt.mask)
        try:
            s.dropped = s.context.fit(len(text) + req.max_frames, self.limits.max_seq_len, self.headroom,
                                      keep_turn=req.turn.turn_id)
        except DoesNotFit as e:
            return Violation("max_audio_ms", f"{e}: lower max_audio_ms or shorten the text")
        if self.scheduler.slot_of(s.id) is None:
            s.context.slot_lost()
        tail = s.context.tail()
        frames = cat([tail, text]) if tail is not None else text
        prompt = Prompt(frames.tokens, frames.mask, start=s.context.kv_len)
        req.prompt_len, req.num_prefilled = prompt.end, prompt.start
        if prompt.start == 0 and self.block_positions:
            req.block_hashes = block_hashes(prompt, self.block_positions, tenant=req.params.tenant)
        s.text, s.frames = text, []
        return prompt

    def frame(self, req: Request, codes: torch.Tensor) -> None:
        """One frame of a running piece (EOS frames excluded). codes [32], on the device."""
        self._sessions[req.session].frames.append(codes)

    def finished(self, req: Request, reason: FinishReason, now: float) -> ContextState | None:
        """A turn of a session ended (any reason): the context after it. None: the session is gone."""
        s = self._sessions.get(req.session)
        if s is None or s.request is not req:
            return None
        s.request, s.last_active = None, now
        if req.turn.kind is TurnKind.SPEAK and s.text is not None:
            self._keep_piece(s, req, reason)
        s.text, s.frames = None, []
        return s.context.state(s.dropped)

    def _keep_piece(self, s: Session, req: Request, reason: FinishReason) -> None:
        n = len(s.frames)
        fed = n if reason is FinishReason.EOS else max(0, n - 1)  # frames whose rows are in the slot
        prefilled = req.num_prefilled >= req.prompt_len
        computed = req.prompt_len + fed if prefilled else req.num_prefilled
        made_audio = prefilled and reason in (FinishReason.EOS, FinishReason.LENGTH, FinishReason.CANCELLED)
        if not made_audio:
            s.context.computed(computed)
            return
        codes = torch.stack(s.frames).cpu() if n else torch.zeros(0, NUM_CODEBOOKS, dtype=torch.long)  # [n, 32]
        tokens, mask = audio_frames(codes.t())
        audio = Frames(tokens[:n], mask[:n])  # the end-of-audio frame is the context's own
        s.context.add_spoken(req.turn.turn_id, s.text, audio, fed, computed)

    def interrupted(self, session: int, turn_id: str, heard_frames: int | None) -> ContextState | None:
        """After its running piece (if any) ended: the turn keeps what was heard."""
        s = self._sessions.get(session)
        if s is None:
            return None
        s.context.cut_turn(turn_id, heard_frames)
        return s.context.state()

    def remove_turn(self, session: int, turn_id: str) -> ContextState | None:
        s = self._sessions.get(session)
        if s is None:
            return None
        s.context.remove_turn(turn_id)
        return s.context.state()

    # -- slots -------------------------------------------------------------------------
    def slot_lost(self, session: int) -> None:
        s = self._sessions.get(session)
        if s is not None:
            s.context.slot_lost()

    def release_idle(self, now: float) -> list[int]:
        """Sessions without a turn for conversation_idle_s give their slot back."""
        idle_s = self.limits.conversation_idle_s
        out = []
        for s in self._sessions.values():
            if (idle_s > 0 and s.request is None and now - s.last_active >= idle_s
                    and self.scheduler.release(s.id)):
                s.context.slot_lost()
                out.append(s.id)
        return out
