"""The parts that go with a model source: its tokenizer, its Mimi weights, its watermark weights.

One rule, used by the server, csm-bench and csm-codes: a preset (random weights, the offline
demo) gets the offline parts (byte tokenizer, random Mimi, random watermark model), so every
code path runs with no network; a real checkpoint gets the real ones (hub ids, or what the
caller names). A real checkpoint never silently falls back to random parts: when the hub is
unreachable and nothing local is named, loading fails with a message that says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from csm_core.config import PRESETS
from csm_core.mimi import DEFAULT_REPO as MIMI_HUB_REPO
from csm_core.mimi import RANDOM
from csm_core.text import DEFAULT_TOKENIZER, OFFLINE_TOKENIZER
from csm_core.watermark import HUB_REPO as WATERMARK_HUB_REPO


@dataclass(frozen=True, slots=True)
class Companions:
    tokenizer: str  # OFFLINE_TOKENIZER, a tokenizer.json / directory, or a hub id
    mimi: str  # RANDOM, a .safetensors file / directory, or a hub id
    watermark: str  # RANDOM, a checkpoint directory, or a hub id


def companions_for(model: str, *, tokenizer: str | None = None, mimi: str | None = None,
                   watermark: str | None = None) -> Companions:
    """The parts for model source `model`; a part named by the caller wins."""
    if model in PRESETS:
        default = Companions(OFFLINE_TOKENIZER, RANDOM, RANDOM)
    else:
        default = Companions(DEFAULT_TOKENIZER, MIMI_HUB_REPO, WATERMARK_HUB_REPO)
    return Companions(tokenizer or default.tokenizer, mimi or default.mimi, watermark or default.watermark)


class CompanionError(RuntimeError):
    """A model's tokenizer, Mimi or watermark weights could not be loaded; the message says
    which, from where, and the flag that names a local copy."""


@contextlib.contextmanager
def loading(what: str, source: str, flag: str) -> Iterator[None]:
    """Turns any failure to load a part into a CompanionError a person can act on."""
    try:
        yield
    except Exception as e:
        raise CompanionError(f"cannot load the {what} from {source!r} ({type(e).__name__}: {e}); "
                             f"with no network, pass {flag} with a local copy") from e
