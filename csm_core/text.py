"""Text side of CSM: the Llama-3 tokenizer with CSM's template.

CSM tokenizes "[{speaker}]{text}" as <|begin_of_text|> ... <|end_of_text|> (ids 128000/128001)
with the Llama-3.2 tokenizer (`meta-llama/Llama-3.2-1B`; `unsloth/Llama-3.2-1B` is the same
tokenizer without the gate). Offline presets use a byte-level tokenizer built here with the
same special ids, so every code path runs without the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from csm_core.constants import BEGIN_OF_TEXT, END_OF_TEXT

DEFAULT_TOKENIZER = "unsloth/Llama-3.2-1B"
OFFLINE_TOKENIZER = "offline"
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, source: str):
        bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
        if (bos, eos) != (BEGIN_OF_TEXT, END_OF_TEXT):
            raise ValueError(
                f"tokenizer {source!r} maps {BOS}/{EOS} to {bos}/{eos}; CSM needs {BEGIN_OF_TEXT}/{END_OF_TEXT}"
                " (use the Llama-3.2 tokenizer)"
            )
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS}:0 $A:0 {EOS}:0",
            pair=f"{BOS}:0 $A:0 {EOS}:0 {BOS}:1 $B:1 {EOS}:1",
            special_tokens=[(BOS, BEGIN_OF_TEXT), (EOS, END_OF_TEXT)],
        )
        self.tokenizer = tokenizer
        self.source = source

    def encode_turn(self, speaker: int, text: str) -> list[int]:
        """Token ids of one turn, template included."""
        return self.tokenizer.encode(f"[{speaker}]{text}").ids


def build_offline_tokenizer() -> Tokenizer:
    """Byte-level tokenizer (one token per UTF-8 byte) with Llama-3's special ids."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab[BOS], vocab[EOS] = BEGIN_OF_TEXT, END_OF_TEXT
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    return tok


def load_tokenizer(source: str | None) -> TextTokenizer:
    """`offline` (or None): the built-in byte-level tokenizer. A tokenizer.json file or a directory
    holding one: that file. Anything else: a hub id (needs network or a warm HF cache)."""
    if source is None or source == OFFLINE_TOKENIZER:
        return TextTokenizer(build_offline_tokenizer(), OFFLINE_TOKENIZER)
    path = Path(source)
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.suffix == ".json" or os.sep in source and not path.exists():
        if not path.exists():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return TextTokenizer(Tokenizer.from_file(str(path)), str(path))
    return TextTokenizer(Tokenizer.from_pretrained(source), source)
