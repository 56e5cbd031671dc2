"""Engines for the tests that compare the frames a request made."""

from __future__ import annotations

import torch

from server.engine.config import EngineConfig
from server.engine.engine import Engine, build
from server.engine.parts import EngineParts


def recording_engine(config: EngineConfig, parts: EngineParts | None = None, ready_s: float = 300) -> Engine:
    """A started engine whose `frames` maps each request's label to its frames, in order."""
    eng = build(config, parts=parts)
    frames: dict[str, list[torch.Tensor]] = {}
    eng.add_frame_observer(lambda label, codes: frames.setdefault(label, []).append(codes))
    eng.frames = frames
    eng.start()
    assert eng.wait_ready(ready_s)
    return eng
