"""Prompt framing: segments -> backbone frames `tokens[seq, 33]`, `mask[seq, 33]`.

Columns 0..31 hold Mimi codes, column 32 (TEXT_COLUMN) a text token. A text segment is one
position per token; a context audio segment is one position per Mimi frame followed by one
all-zero (end-of-audio) frame. The prompt is the context segments in order, each text then
audio, followed by the text of the turn to generate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csm_core.constants import FRAME_WIDTH, NUM_CODEBOOKS, TEXT_COLUMN
from csm_core.text import TextTokenizer


@dataclass(frozen=True, slots=True)
class Segment:
    speaker: int
    text: str
    codes: torch.Tensor | None = None  # [32, frames] Mimi codes of the turn's audio


@dataclass(frozen=True, slots=True)
class Prompt:
    """Backbone positions [start, start + len) of a prompt. A request's prompt starts at 0; a
    conversation's turn starts after the positions its slot already holds."""

    tokens: torch.Tensor  # [seq, 33] int64
    mask: torch.Tensor  # [seq, 33] bool
    start: int = 0  # absolute position of row 0

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def end(self) -> int:
        return self.start + self.tokens.shape[0]


def text_frames(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.zeros(len(ids), FRAME_WIDTH, dtype=torch.long)
    mask = torch.zeros(len(ids), FRAME_WIDTH, dtype=torch.bool)
    tokens[:, TEXT_COLUMN] = torch.tensor(ids, dtype=torch.long)
    mask[:, TEXT_COLUMN] = True
    return tokens, mask


def audio_frames(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [32, F] -> F + 1 positions (the last is the all-zero end-of-audio frame)."""
    if codes.dim() != 2 or codes.shape[0] != NUM_CODEBOOKS:
        raise ValueError(f"audio codes must be [{NUM_CODEBOOKS}, frames], got {list(codes.shape)}")
    f = codes.shape[1]
    tokens = torch.zeros(f + 1, FRAME_WIDTH, dtype=torch.long)
    mask = torch.zeros(f + 1, FRAME_WIDTH, dtype=torch.bool)
    tokens[:f, :NUM_CODEBOOKS] = codes.t().long().cpu()
    mask[:, :NUM_CODEBOOKS] = True
    return tokens, mask


def audio_prompt_len(num_frames: int) -> int:
    return num_frames + 1


def segment_frames(tokenizer: TextTokenizer, seg: Segment) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One context segment's positions, tokens and mask [n, 33], and how many of them are text."""
    tokens, mask = text_frames(tokenizer.encode_turn(seg.speaker, seg.text))
    text_len = tokens.shape[0]
    if seg.codes is not None:
        audio_tokens, audio_mask = audio_frames(seg.codes)
        tokens, mask = torch.cat([tokens, audio_tokens]), torch.cat([mask, audio_mask])
    return tokens, mask, text_len


def build_prompt(tokenizer: TextTokenizer, context: list[Segment], speaker: int, text: str | None) -> Prompt:
    """The context segments, then the text of the turn to generate (None: the segments only)."""
    parts = [segment_frames(tokenizer, seg)[:2] for seg in context]
    if text is not None:
        parts.append(text_frames(tokenizer.encode_turn(speaker, text)))
    return Prompt(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
