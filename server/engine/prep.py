"""The prep thread: a new request's context audio decoded, resampled and Mimi-encoded (one
batched call for every request waiting), its prompt tokenized and framed, its fit checked.

It runs off the engine thread, so a long context never stalls the streams being decoded, and
at the lowest CPU priority (Linux: per-thread nice), so on a busy CPU the running streams come
first. It changes no request: it reports `Prepared` or `PrepFailed` to the engine's control
channel. A job's own failure fails that request; an error escaping the loop stops the engine
(server/engine/threads.py).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from csm_core.audio_io import AudioDecodeError, AudioTooLong, decode_audio, resample
from csm_core.constants import SAMPLE_RATE
from csm_core.framing import Prompt, Segment, build_prompt, segment_frames
from csm_core.mimi import MimiCodec
from csm_core.sampling import SamplingParams
from csm_core.text import TextTokenizer
from server.engine import rules
from server.engine.kv_blocks import block_hashes
from server.engine.messages import Control, Prepared, PrepFailed, PrepJob, Stop, TurnKind
from server.engine.threads import BACKGROUND_NICE, pipeline_thread
from server.engine.types import EncodedAudio, EngineLimits, Violation

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Work:
    """One job while it is prepared."""

    job: PrepJob
    waves: dict[int, torch.Tensor] = field(default_factory=dict)  # segment index -> 24 kHz wave
    codes: dict[int, torch.Tensor] = field(default_factory=dict)  # segment index -> [32, frames]
    violations: list[Violation] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.error is None


class PrepWorker:
    def __init__(self, tokenizer: TextTokenizer, codec: MimiCodec, limits: EngineLimits,
                 report: Callable[[Control], None], torch_threads: int | None = None, block_positions: int = 0):
        self._tokenizer = tokenizer
        self._block_positions = block_positions  # the prefix cache's block (0: off): prompts get their hashes
        self._codec = codec
        self._limits = limits
        self._report = report  # the engine's control channel
        self._jobs: queue.SimpleQueue[PrepJob | Stop] = queue.SimpleQueue()
        self._thread = pipeline_thread("csm-prep", self._loop, torch_threads, nice=BACKGROUND_NICE, report=report)
        self._thread.start()

    # -- engine thread -----------------------------------------------------------------
    def prepare(self, job: PrepJob) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(Stop())
        self._thread.join(timeout=10)

    # -- prep thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = [self._jobs.get()]
            while not isinstance(batch[-1], Stop):  # every job waiting, for one batched Mimi call
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = isinstance(batch[-1], Stop)
            jobs = [w for w in batch if not isinstance(w, Stop)]
            if jobs:
                self._prepare([_Work(job) for job in jobs])
            if stop:
                return

    def _prepare(self, work: list[_Work]) -> None:
        """Jobs with no audio to decode or encode first, so that they never wait behind another
        job's audio; then the others' audio, decoded one clip at a time and encoded in one call."""
        plain, with_audio = [], []
        for w in work:
            (with_audio if any(seg.audio is not None for seg in w.job.params.context) else plain).append(w)
        for w in with_audio:
            self._decode(w)
        self._encode([w for w in with_audio if w.ok])
        for w in plain + with_audio:
            if w.ok:
                self._build(w)  # reports Prepared when it succeeds
            if not w.ok:
                self._report(PrepFailed(w.job.id, tuple(w.violations), w.error))

    def _decode(self, w: _Work) -> None:
        """Context audio -> 24 kHz waves; audio that cannot be used becomes a violation. Each clip
        is decoded up to max_context_audio_s and, with those before it, up to the audio a slot
        holds: past either it is refused without being decoded whole."""
        room = rules.context_audio_room_s(self._limits)
        used = 0.0  # seconds of the job's audio before this clip
        for i, seg in enumerate(w.job.params.context):
            if seg.audio is None:
                continue
            if isinstance(seg.audio, EncodedAudio):
                limit = min(self._limits.max_context_audio_s, max(0.0, room - used))
                try:
                    audio, rate = decode_audio(seg.audio.data, seg.audio.encoding, seg.audio.sample_rate or None,
                                               max_seconds=limit)
                except AudioTooLong as e:
                    field = f"context[{i}].audio"
                    w.violations.append(rules.clip_too_long(field, e, self._limits) or Violation(
                        field, f"the clips up to this one take more than the {room:.1f} s of audio a request can "
                               "hold: send less or shorter audio"))
                    continue
                except AudioDecodeError as e:
                    w.violations.append(Violation(f"context[{i}].audio", str(e)))
                    continue
                except Exception as e:  # a decoder's own failure ends this request, never the prep thread
                    w.error = f"context[{i}].audio could not be decoded: {e}"
                    return
            else:
                audio, rate = seg.audio, seg.sample_rate
            used += len(audio) / rate
            try:
                w.waves[i] = resample(torch.from_numpy(np.asarray(audio, np.float32)), rate, SAMPLE_RATE)
            except Exception as e:
                w.error = f"context[{i}].audio could not be resampled: {e}"

    def _encode(self, work: list[_Work]) -> None:
        """Every wave of every job in one batched Mimi call; one at a time if that fails, so
        that only the request with the bad audio fails."""
        keys = [(w, i) for w in work for i in w.waves]
        if not keys:
            return
        try:
            encoded = self._codec.encode([w.waves[i].to(self._codec.device) for w, i in keys])
            for (w, i), codes in zip(keys, encoded):
                w.codes[i] = codes
        except Exception:
            for w, i in keys:
                try:
                    w.codes[i] = self._codec.encode([w.waves[i].to(self._codec.device)])[0]
                except Exception as e:
                    w.error = f"context[{i}].audio could not be encoded: {e}"

    def _build(self, w: _Work) -> None:
        p, kind = w.job.params, w.job.turn
        try:
            segments = [Segment(seg.speaker, seg.text, _stored(seg.codes) if seg.codes is not None else w.codes.get(i))
                        for i, seg in enumerate(p.context)]
            if kind in (TurnKind.VOICE, TurnKind.CONTEXT):  # a conversation's segments, each framed alone
                framed = [segment_frames(self._tokenizer, seg) for seg in segments]
                prompt = Prompt(torch.cat([f[0] for f in framed]), torch.cat([f[1] for f in framed]))
                lengths = dict(text_lens=tuple(f[2] for f in framed), lengths=tuple(len(f[0]) for f in framed))
            else:  # a request's whole prompt, or a speak turn's text (the engine puts the context before it)
                prompt = build_prompt(self._tokenizer, segments, p.speaker, p.text)
                lengths = {}
        except Exception as e:
            w.error = f"the prompt could not be built: {e}"
            return
        if kind is not None:  # a conversation's window is the engine's to manage (server/engine/sessions.py)
            self._report(Prepared(w.job.id, prompt, SamplingParams(p.temperature, p.top_k), **lengths))
            return
        violation = rules.check_prompt_fits(len(prompt), w.job.max_frames, self._limits)
        if violation is not None:
            w.violations.append(violation)
            return
        hashes = block_hashes(prompt, self._block_positions, tenant=p.tenant) if self._block_positions else ()
        self._report(Prepared(w.job.id, prompt, SamplingParams(p.temperature, p.top_k), hashes))


def _stored(codes: np.ndarray) -> torch.Tensor:
    """A stored voice's codes (int16 [32, frames], read-only) as the prompt takes them."""
    return torch.from_numpy(codes.astype(np.int64))
