"""Cutting a speak turn's streamed text into pieces that can be generated at once. Torch-free.

A piece ends at a sentence end: `.`, `!`, `?`, `…` (with closing quotes or brackets) followed by
whitespace, or a CJK full stop. The whitespace matters: a period alone could be a decimal
point or an abbreviation, and an LLM's next token brings it (" How"). A sentence shorter than
`min_chars` is joined to the next one (CSM speaks a lone "Yes." oddly, and two calls cost more
than one); a flush or the end of the turn cuts whatever has arrived.
"""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"(?:[.!?…]+[\"'”’)\]]*\s+|[。！？]+)")
MIN_PIECE_CHARS = 10


class SentenceSplitter:
    def __init__(self, min_chars: int = MIN_PIECE_CHARS):
        self.min_chars = min_chars
        self._text = ""

    def feed(self, text: str) -> list[str]:
        """The pieces this text completes, in order."""
        self._text += text
        pieces, start = [], 0
        for end in SENTENCE_END.finditer(self._text):
            piece = self._text[start:end.end()].strip()
            if len(piece) >= self.min_chars:
                pieces.append(piece)
                start = end.end()
        self._text = self._text[start:]
        return pieces

    def flush(self) -> str | None:
        """Whatever has arrived, as one piece (None when it is only whitespace)."""
        piece, self._text = self._text.strip(), ""
        return piece or None
