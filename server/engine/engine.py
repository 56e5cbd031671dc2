"""The engine as the rest of the server sees it: submit, drain, shutdown, info, stats.

    engine = build(EngineConfig(model="bench"))    # or build(config, parts=...) in a test
    engine.start(); engine.wait_ready()
    for event in engine.submit(SynthesisParams(text="Hello.")): ...

A thin facade over the threads it assembles (server/engine/{prep,core,mimi_decode,output}.py)
from its parts (server/engine/parts.py), each handed the control channel it reports through
(server/engine/control.py), made first. `submit` checks the request's rules and the capacity
on the caller's thread (cheap: no decoding, no tokenizing), mints the request's id and posts it
to the engine thread; everything after that happens on the engine's threads.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

import torch

from csm_core.constants import FRAME_MS
from server.engine import rules
from server.engine.admission import Admission
from server.engine.config import EngineConfig
from server.engine.control import ControlChannel
from server.engine.conversation import RETRY_S_CONVERSATION, Conversation
from server.engine.core import EngineCore
from server.engine.messages import SessionOpen, Submitted
from server.engine.mimi_decode import MimiDecoder
from server.engine.output import OutputStage
from server.engine.parts import EngineParts, VoiceParts, engine_info, load_parts
from server.engine.prefix_cache import PrefixIndex
from server.engine.prep import PrepWorker
from server.engine.request import draw_seed
from server.engine.scheduler import Scheduler
from server.engine.sessions import Sessions
from server.engine.stream import RequestStream
from server.engine.threads import plan_threads
from server.engine.types import (
    EngineInfo, EngineStats, EngineUnavailable, InvalidRequest, PipelineCounters, QueueFull, RequestTimes, StepStats,
    SynthesisParams, TooManyConversations,
)

log = logging.getLogger(__name__)

WARMUP_AUDIO_MS = 2 * FRAME_MS
# Seconds a rejected caller is told to wait per request queued ahead of it (RetryInfo).
RETRY_S_PER_WAITING = 0.5


def build(config: EngineConfig, parts: EngineParts | None = None) -> Engine:
    """An engine from its config; `parts` replaces the loaded model, tokenizer, Mimi and
    watermarker (tests inject fakes and faults here)."""
    return Engine(config, parts if parts is not None else load_parts(config))


class Engine:
    def __init__(self, config: EngineConfig, parts: EngineParts):
        self.config = config
        self.parts = parts
        self._info = engine_info(config, parts)
        self.threads = plan_threads(config, parts)
        torch_threads = self.threads.torch_threads
        self._admission = Admission(config.max_slots + config.max_queue)
        self._conversations = Admission(config.max_conversations)
        blocks = parts.runner.kv_blocks  # the prefix cache's rows (None: off)
        prefix = PrefixIndex(blocks.num_blocks, blocks.block_positions, blocks.block_bytes) if blocks else None
        preemptable = config.preempt_max if parts.runner.swap is not None else 0
        scheduler = Scheduler(config.max_slots, config.prefill_chunk, config.prefill_budget, config.idle_prefill_budget,
                              prefix, preemptable)
        block_positions = blocks.block_positions if blocks else 0
        sessions = Sessions(scheduler, self._info.limits, block_positions)
        self._control = ControlChannel()  # first: every thread below reports through it
        report = self._control.post
        self._output = OutputStage(parts.watermarker, config.watermark_first_chunk_frames, config.watermark_chunk_frames,
                                   report, torch_threads, self.threads.output_workers)
        self._mimi = MimiDecoder(parts.codec, scheduler.rows.num_slots, self._output, report,
                                 config.mimi_frames_per_call, torch_threads)
        self._prep = PrepWorker(parts.tokenizer, parts.codec, self._info.limits, report, torch_threads, block_positions)
        self._core = EngineCore(self._control, parts.runner, scheduler, sessions, self._admission, self._prep,
                                self._mimi, parts.watermarker is not None, torch_threads, config.reader_stall_s,
                                config.preempt_ahead_s, config.preempt_grace_s)
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._accepting = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._core.start()
        threading.Thread(target=self._warm_up, name="csm-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        t0 = time.monotonic()
        for _ in self._submit(SynthesisParams(text="warm up", max_audio_ms=WARMUP_AUDIO_MS, seed=0,
                                              request_id="warmup")):
            pass
        self._accepting = True
        self._ready.set()
        log.info("engine ready in %.1f s (%s, %s, %d slots)", time.monotonic() - t0, self._info.device,
                 self._info.dtype, self.config.max_slots)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._accepting and self._core.failure is None

    @property
    def failure(self) -> BaseException | None:
        """What stopped the engine, if anything did: an error of its own thread, or PipelineStopped
        when a prep, Mimi or output thread stopped (it serves nothing after that)."""
        return self._core.failure

    def drain(self, grace_s: float) -> bool:
        """Stop admitting new work; wait up to grace_s for in-flight requests to finish and
        their audio to be delivered."""
        self._accepting = False
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self._admission.count == 0 and self._conversations.count == 0:
                self.flush()
                return True
            time.sleep(0.05)
        return False

    def shutdown(self) -> None:
        """Requests still running end as CANCELLED; every thread stops."""
        self._accepting = False
        self._core.stop()
        self._mimi.close()  # after the ends the engine thread queued
        self._output.close()
        self._prep.close()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every frame and stream end handed to Mimi so far reached its stream."""
        self._mimi.flush(timeout)

    # -- observation -------------------------------------------------------------------
    def add_step_observer(self, fn: Callable[[StepStats], None]) -> None:
        """fn(StepStats) after every engine step, on the engine thread."""
        self._core.step_observers.append(fn)

    def add_request_observer(self, fn: Callable[[RequestTimes], None]) -> None:
        """fn(RequestTimes) when a request ends (any reason), on the engine thread."""
        self._core.request_observers.append(fn)

    def add_frame_observer(self, fn: Callable[[str, torch.Tensor], None]) -> None:
        """fn(request label, codes [32] on CPU) for every generated frame (debugging, tests)."""
        self._core.frame_observers.append(fn)

    def add_fatal_observer(self, fn: Callable[[BaseException], None]) -> None:
        """fn(exception) once, on the engine thread, if the engine stops on an error (`failure`)."""
        self._core.fatal_observers.append(fn)

    def info(self) -> EngineInfo:
        return self._info

    def voice_parts(self) -> VoiceParts:
        """What a voice encoder shares with this engine (server/voices/mimi_encoder.py)."""
        return VoiceParts(self.parts.codec, self.parts.tokenizer, self.threads.torch_threads)

    def stats(self) -> EngineStats:
        return self._core.stats

    def counters(self) -> PipelineCounters:
        return PipelineCounters(output_busy_s=self._output.busy_s, mimi_busy_s=self._mimi.busy_s,
                                mimi_calls=self._mimi.calls, mimi_frames=self._mimi.frames)

    # -- submission (any thread) -------------------------------------------------------
    def submit(self, params: SynthesisParams) -> RequestStream:
        """Raises InvalidRequest (every violation found), QueueFull or EngineUnavailable."""
        if not self.ready:
            raise EngineUnavailable("the server is warming up or draining; retry shortly or on another replica")
        return self._submit(params)

    def _submit(self, params: SynthesisParams) -> RequestStream:
        limits = self._info.limits
        violations = rules.check(params, limits)
        if violations:
            raise InvalidRequest(violations)
        if not self._admission.try_admit():
            waiting = max(0, self._admission.count - limits.max_slots)
            retry = max(1.0, RETRY_S_PER_WAITING * waiting)
            raise QueueFull(f"the server is full: {limits.max_slots} streams running and {limits.max_queue} "
                            f"requests waiting, its limit; retry in about {retry:.0f} s or use another replica",
                            retry)
        rid = next(self._ids)
        seed = draw_seed(params.seed)
        sink = RequestStream(rid, params.request_id, self._control.post, self.config.stream_buffer_s)
        self._control.post(Submitted(rid, params, sink, seed, rules.max_frames(params, limits), time.monotonic()))
        return sink

    # -- conversations (any thread) ----------------------------------------------------
    def open_conversation(self, label: str, tenant: str = "") -> Conversation:
        """A conversation whose context stays in the engine (server/engine/conversation.py), its
        turns the tenant's. Raises TooManyConversations or EngineUnavailable."""
        if not self.ready:
            raise EngineUnavailable("the server is warming up or draining; retry shortly or on another replica")
        if not self._conversations.try_admit():
            n = self.config.max_conversations
            raise TooManyConversations(f"the server holds {n} conversations, its limit; retry later or use another "
                                       f"replica", RETRY_S_CONVERSATION)
        session = next(self._ids)
        self._control.post(SessionOpen(session, label))
        return Conversation(session, label, self._info.limits, self._control.post, lambda: next(self._ids),
                            self._conversations, self.config.stream_buffer_s, tenant)
