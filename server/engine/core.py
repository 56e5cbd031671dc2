"""The engine thread: one per process; it owns the model, the KV cache and every request's state.

    loop:  drain the control channel  ->  step()
    step:  schedule  ->  run  ->  hand off to Mimi  ->  postprocess

Other threads never touch a request: callers (Submitted, Cancel; conversations: SessionOpen,
SessionInterrupt, SessionClose), the prep thread (Prepared, PrepFailed) and the Mimi and output
threads (StreamFailed; each of the three PipelineFailed, when it stops on an error) post
messages to the control channel (server/engine/control.py), which this thread drains at one
fixed point, before it schedules, as vLLM drains its aborts. A request's status, and a
conversation's context (server/engine/sessions.py), therefore change here only; a request ends
in its books (server/engine/books.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from server.engine.admission import Admission
from server.engine.books import RequestBooks
from server.engine.control import ControlChannel
from server.engine.messages import (
    Cancel, Control, MimiRow, MimiStep, Pause, PipelineFailed, Prepared, PrepFailed, PrepJob, Resume, SessionClose,
    SessionInterrupt, SessionOpen, StreamFailed, StreamRef, Submitted, TurnKind,
)
from server.engine.mimi_decode import MimiDecoder
from server.engine.preemption import Preemption
from server.engine.prep import PrepWorker
from server.engine.request import Request, RequestStatus
from server.engine.runner import ModelRunner, StepResult
from server.engine.scheduler import Scheduler, SchedulerOutput
from server.engine.sessions import Sessions
from server.engine.threads import PipelineStopped, pipeline_thread
from server.engine.types import EngineStats, Finished, FinishReason, StepStats, Violation

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.1  # how long an idle engine waits for a message before looking again
STOPPED = "the engine stopped; the server is restarting"  # the error of every request it leaves


class EngineCore:
    def __init__(self, control: ControlChannel, runner: ModelRunner, scheduler: Scheduler, sessions: Sessions,
                 admission: Admission, prep: PrepWorker, mimi: MimiDecoder, watermarked: bool,
                 torch_threads: int | None, reader_stall_s: float = 0.0, preempt_ahead_s: float = 0.0,
                 preempt_grace_s: float = 0.0):
        self._control = control  # what prep, Mimi, output and the callers' streams post to
        self.runner = runner
        self.reader_stall_s = reader_stall_s  # a request paused this long for its reader ends (0: never)
        self.scheduler = scheduler
        self.sessions = sessions
        self.prep = prep
        self.mimi = mimi
        self.watermarked = watermarked
        self.preemption = Preemption(scheduler, runner, preempt_ahead_s, preempt_grace_s)
        self._admission = admission
        self._books = RequestBooks(scheduler, sessions, admission, mimi, watermarked, runner.drop_swapped,
                                   self.preemption)
        self.request_observers = self._books.observers
        self.step_observers: list[Callable[[StepStats], None]] = []
        self.frame_observers: list[Callable[[str, torch.Tensor], None]] = []
        self.fatal_observers: list[Callable[[BaseException], None]] = []
        self.failure: BaseException | None = None  # what stopped the engine thread, if anything did
        self.stats = EngineStats(0, scheduler.slots.num_slots, 0, 0, 0)  # published after every loop
        self._stop = False
        self._thread = pipeline_thread("csm-engine", self._loop, torch_threads)

    # -- any thread --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop; the requests still in it end as CANCELLED (server shut down)."""
        self._stop = True
        self._control.wake()
        self._thread.join(timeout)

    # -- engine thread -----------------------------------------------------------------
    def _loop(self) -> None:
        """Runs until stopped. An error escaping a step's own handling, or a pipeline thread that
        stopped (PipelineStopped), means the engine's state cannot be trusted: every request ends
        with an error, so does every message posted from now on (the channel closes), and the
        fatal observers are told (the server turns NOT_SERVING and exits, so Kubernetes
        restarts it), never a silent hang."""
        try:
            self._run()
        except BaseException as exc:
            self.failure = exc
            log.critical("the engine thread stopped", exc_info=exc)
            try:
                self._control.close(lambda msg: self._books.refuse(msg, STOPPED))
                if isinstance(exc, PipelineStopped):  # ends handed to Mimi may never reach their streams
                    self._books.break_pipeline(STOPPED)
                self._books.finish_all(FinishReason.ERROR, STOPPED)
            except BaseException:
                log.exception("could not end the requests of the stopped engine")
            for fn in self.fatal_observers:
                fn(exc)

    def _run(self) -> None:
        while not self._stop:
            self._drain_control()
            self.sessions.release_idle(time.monotonic())
            self._end_stalled()
            self.preemption.step()
            if not self.scheduler.has_work():
                self._publish()
                self._control.wait(IDLE_WAIT_S)
                continue
            try:
                self.step()
            except PipelineStopped:  # Mimi stopped while the step waited for it: the engine stops
                raise
            except Exception:  # a fault in the batched step: fail the batch, keep serving
                log.exception("engine step failed; failing the requests in flight")
                for req in list(self.scheduler.running):
                    self._books.finish(req, FinishReason.ERROR, "internal error in the engine step")
            self._publish()
        self._drain_control()
        self._books.finish_all(FinishReason.CANCELLED, "the server shut down before the request finished")
        self._publish()

    def _drain_control(self) -> None:
        for msg in self._control.drain():
            if isinstance(msg, Submitted):
                self._submitted(msg)
            elif isinstance(msg, (SessionOpen, SessionInterrupt, SessionClose)):
                self._session_message(msg)
            elif isinstance(msg, PipelineFailed):
                raise PipelineStopped.of(msg.thread, msg.error)
            else:
                ids = msg.ids if isinstance(msg, StreamFailed) else (msg.id,)
                for req in [r for r in map(self._books.get, ids) if r is not None]:  # finished ones are gone
                    self._on_request_message(req, msg)

    def _submitted(self, msg: Submitted) -> None:
        req = Request(msg.id, msg.params, msg.sink, msg.seed, msg.max_frames, msg.t_arrival)
        self._books.open(req)
        if msg.turn is not None:
            req.turn, req.session = msg.turn, msg.turn.session
            if not self.sessions.submitted(req, time.monotonic()):
                self._books.finish(req, FinishReason.CANCELLED, "the conversation has ended")
                return
        self.prep.prepare(PrepJob(msg.id, msg.params, msg.max_frames, msg.turn.kind if msg.turn else None))

    def _on_request_message(self, req: Request, msg: Control) -> None:
        if isinstance(msg, Prepared):
            self._prepared(req, msg)
        elif isinstance(msg, Cancel):
            self._books.finish(req, FinishReason.CANCELLED)
        elif isinstance(msg, Pause):
            req.paused_since = time.monotonic()
        elif isinstance(msg, Resume):
            req.paused_since = None
        elif isinstance(msg, PrepFailed):
            reason = FinishReason.INVALID if msg.violations else FinishReason.ERROR
            self._books.finish(req, reason, msg.error, msg.violations)
        else:
            self._books.finish(req, FinishReason.ERROR, msg.error)

    def _prepared(self, req: Request, msg: Prepared) -> None:
        prompt = msg.prompt
        if req.turn is not None and req.turn.kind is not TurnKind.SPEAK:  # segments join the context
            violation = self.sessions.apply_segments(req, msg)
            if violation is not None:
                self._books.finish(req, FinishReason.INVALID, violations=(violation,))
            else:
                self._books.finish(req, FinishReason.EOS)
            return
        if req.turn is not None:  # a conversation's piece: its prompt starts where its slot's rows end
            prompt = self.sessions.speak_prompt(req, msg)
            if isinstance(prompt, Violation):
                self._books.finish(req, FinishReason.INVALID, violations=(prompt,))
                return
        else:
            req.prompt_len, req.block_hashes = len(prompt), msg.block_hashes
        req.state = self.runner.new_state(prompt, msg.sampling, req.seed)
        self.scheduler.add(req)

    def _session_message(self, msg: SessionOpen | SessionInterrupt | SessionClose) -> None:
        if isinstance(msg, SessionOpen):
            self.sessions.open(msg, time.monotonic())
            return
        session = self.sessions.get(msg.session)
        running = session.request if session is not None else None
        if isinstance(msg, SessionClose):
            if running is not None:
                self._books.finish(running, FinishReason.CANCELLED)
            self.sessions.close(msg.session)
            return
        if running is not None and running.turn.turn_id == msg.turn_id:
            self._books.finish(running, FinishReason.CANCELLED)
        if msg.remove:
            state = self.sessions.remove_turn(msg.session, msg.turn_id)
        else:
            state = self.sessions.interrupted(msg.session, msg.turn_id, msg.heard_frames)
        msg.sink.push(Finished(reason=FinishReason.CANCELLED, frames=0, prompt_frames=0, queue_s=0.0, ttfa_s=None,
                               total_s=0.0, watermarked=self.watermarked, context=state))

    def _end_stalled(self) -> None:
        if not self.reader_stall_s:
            return
        now = time.monotonic()
        for req in [r for r in self.scheduler.running + self.scheduler.preempted if r.paused_since is not None]:
            if now - req.paused_since > self.reader_stall_s:
                self._books.finish(req, FinishReason.STALLED,
                             f"the client read its audio too slowly: {req.sink.unread_ms / 1000:.1f} s of it "
                             f"waited unread for more than {self.reader_stall_s:g} s")

    def step(self) -> StepStats:
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        self._admission.reserved = self.scheduler.num_busy_held()
        self._admit(plan)
        result = self.runner.run(plan)
        self._commit_prefix(plan, result)
        t_handoff = time.perf_counter()
        self._hand_off(result)  # paced to Mimi: may wait
        result.timings["mimi"] = time.perf_counter() - t_handoff
        finished = self._postprocess(plan, result)
        stats = StepStats(
            duration_s=time.perf_counter() - t0, decoding=len(result.producers),
            prefill_tokens=plan.num_prefill_tokens, frames=sum(not e for e in result.eos),
            breakdown_s={**result.timings, "other": (time.perf_counter() - t0) - sum(result.timings.values())},
            finished=tuple(finished),
        )
        for fn in self.step_observers:
            fn(stats)
        return stats

    def _admit(self, plan: SchedulerOutput) -> None:
        now = time.monotonic()
        for session in plan.reclaimed:
            self.sessions.slot_lost(session)
        for req in plan.admitted:
            req.t_admitted = now
            req.stream = StreamRef(req.id, req.label, req.row, req.params.output_sample_rate, req.sink)

    def _commit_prefix(self, plan: SchedulerOutput, result: StepResult) -> None:
        """Blocks copied this step are released; blocks written are found from now on,
        unless their request failed."""
        prefix = self.scheduler.prefix
        if prefix is None:
            return
        for load in plan.loads:
            prefix.unpin(load.blocks)
        failed = {id(req) for req, _ in result.failed}
        for save in plan.saves:
            if id(save.chunk.request) in failed:
                prefix.abort(save.block)
            else:
                prefix.commit(save.block)

    def _hand_off(self, result: StepResult) -> None:
        """This step's frames to the Mimi thread (a stream's first frame resets its Mimi row)."""
        rows = tuple(MimiRow(req.stream, result.codes[i], first=req.num_frames == 0)
                     for i, req in enumerate(result.producers) if not result.eos[i])
        if rows:
            self.mimi.decode(MimiStep(rows))

    def _postprocess(self, plan: SchedulerOutput, result: StepResult) -> list[FinishReason]:
        finished = []
        for req, err in result.failed:
            self._books.finish(req, FinishReason.ERROR, err)
            finished.append(FinishReason.ERROR)
        for chunk in plan.prefill:
            if not chunk.request.finished:
                chunk.request.num_prefilled = chunk.end
        # Observers (csm-bench, tests) get the step's frames in one copy: one sync, not one per stream.
        observed = result.codes.cpu() if self.frame_observers and result.producers else None
        for i, req in enumerate(result.producers):
            req.status = RequestStatus.DECODING
            if result.eos[i]:
                self._books.finish(req, FinishReason.EOS)
                finished.append(FinishReason.EOS)
                continue
            req.num_frames += 1
            if req.num_frames == 1:
                req.t_first_frame = time.monotonic()
            if req.turn is not None:
                self.sessions.frame(req, result.codes[i])
            for fn in self.frame_observers:
                fn(req.label, observed[i])
            if req.num_frames >= req.max_frames:
                self._books.finish(req, FinishReason.LENGTH)
                finished.append(FinishReason.LENGTH)
        return finished

    def _publish(self) -> None:
        self.stats = self._books.stats()
