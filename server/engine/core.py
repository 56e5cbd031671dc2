"""The engine thread: one per process; it owns the model, the KV cache and every request's state.

    loop:  drain the control channel  ->  step()
    step:  schedule  ->  run  ->  hand off to Mimi  ->  postprocess

Other threads never touch a request: callers (Submitted, Cancel), the prep thread (Prepared,
PrepFailed) and the Mimi and output threads (StreamFailed) post messages to the control
channel, which this thread drains at one fixed point, before it schedules, as vLLM drains its
aborts. A request's status therefore changes here only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import torch

from server.engine.admission import Admission
from server.engine.messages import (
    Cancel, Control, MimiRow, MimiStep, Pause, Prepared, PrepFailed, PrepJob, Resume, StreamEnd, StreamFailed,
    StreamRef, Submitted,
)
from server.engine.mimi_decode import MimiDecoder
from server.engine.prep import PrepWorker
from server.engine.request import Request, RequestStatus
from server.engine.runner import ModelRunner, StepResult
from server.engine.scheduler import Scheduler, SchedulerOutput
from server.engine.types import EngineStats, Finished, FinishReason, StepStats, Violation

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.1  # how long an idle engine waits for a message before looking again


class EngineCore:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, admission: Admission, watermarked: bool,
                 torch_threads: int | None, reader_stall_s: float = 0.0):
        self.runner = runner
        self.reader_stall_s = reader_stall_s  # a request paused this long for its reader ends (0: never)
        self.scheduler = scheduler
        self.admission = admission
        self.watermarked = watermarked
        self.torch_threads = torch_threads
        self.prep: PrepWorker | None = None  # attached once built: they report to this core
        self.mimi: MimiDecoder | None = None
        self.step_observers: list[Callable[[StepStats], None]] = []
        self.frame_observers: list[Callable[[str, torch.Tensor], None]] = []
        self.fatal_observers: list[Callable[[BaseException], None]] = []
        self.failure: BaseException | None = None  # what stopped the engine thread, if anything did
        self.stats = EngineStats(0, scheduler.slots.num_slots, 0, 0, 0)  # published after every loop
        self._control: queue.SimpleQueue[Control] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._requests: dict[int, Request] = {}  # every request not finished, by id
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="csm-engine", daemon=True)

    # -- any thread --------------------------------------------------------------------
    def post(self, msg: Control) -> None:
        self._control.put(msg)
        self._wakeup.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop; the requests still in it end as CANCELLED (server shut down)."""
        self._stop = True
        self._wakeup.set()
        self._thread.join(timeout)

    # -- engine thread -----------------------------------------------------------------
    def _loop(self) -> None:
        """Runs until stopped. An error escaping a step's own handling means the engine's state
        cannot be trusted: every request ends with an error and the fatal observers are told
        (the server turns NOT_SERVING and exits, so Kubernetes restarts it), never a silent hang."""
        try:
            self._run()
        except BaseException as exc:
            self.failure = exc
            log.critical("the engine thread stopped", exc_info=exc)
            try:
                for req in list(self._requests.values()):
                    self._finish(req, FinishReason.ERROR, "the engine stopped; the server is restarting")
            except BaseException:
                log.exception("could not end the requests of the stopped engine")
            for fn in self.fatal_observers:
                fn(exc)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        while not self._stop:
            self._drain_control()
            self._end_stalled()
            if not self.scheduler.has_work():
                self._publish()
                self._wakeup.wait(IDLE_WAIT_S)
                self._wakeup.clear()
                continue
            try:
                self.step()
            except Exception:  # a fault in the batched step: fail the batch, keep serving
                log.exception("engine step failed; failing the requests in flight")
                for req in list(self.scheduler.running):
                    self._finish(req, FinishReason.ERROR, "internal error in the engine step")
            self._publish()
        self._drain_control()
        for req in list(self._requests.values()):
            self._finish(req, FinishReason.CANCELLED, "the server shut down before the request finished")
        self._publish()

    def _drain_control(self) -> None:
        while True:
            try:
                msg = self._control.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, Submitted):
                self._requests[msg.id] = Request(msg.id, msg.params, msg.sink, msg.seed, msg.max_frames, msg.t_arrival)
                self.prep.prepare(PrepJob(msg.id, msg.params, msg.max_frames))
                continue
            ids = msg.ids if isinstance(msg, StreamFailed) else (msg.id,)
            for req in [self._requests[i] for i in ids if i in self._requests]:  # finished ones are gone
                if isinstance(msg, Prepared):
                    req.prompt_len = len(msg.prompt)
                    req.state = self.runner.new_state(msg.prompt, msg.sampling, req.seed)
                    self.scheduler.add(req)
                elif isinstance(msg, Cancel):
                    self._finish(req, FinishReason.CANCELLED)
                elif isinstance(msg, Pause):
                    req.paused_since = time.monotonic()
                elif isinstance(msg, Resume):
                    req.paused_since = None
                elif isinstance(msg, PrepFailed):
                    reason = FinishReason.INVALID if msg.violations else FinishReason.ERROR
                    self._finish(req, reason, msg.error, msg.violations)
                else:
                    self._finish(req, FinishReason.ERROR, msg.error)

    def _end_stalled(self) -> None:
        if not self.reader_stall_s:
            return
        now = time.monotonic()
        for req in [r for r in self.scheduler.running if r.paused_since is not None]:
            if now - req.paused_since > self.reader_stall_s:
                self._finish(req, FinishReason.STALLED,
                             f"the client read its audio too slowly: {req.sink.unread_ms / 1000:.1f} s of it "
                             f"waited unread for more than {self.reader_stall_s:g} s")

    def step(self) -> StepStats:
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        self._admit(plan)
        result = self.runner.run(plan)
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
        for req in plan.admitted:
            req.t_admitted = now
            req.stream = StreamRef(req.id, req.label, req.slot, req.params.output_sample_rate, req.sink)

    def _hand_off(self, result: StepResult) -> None:
        """This step's frames to the Mimi thread (a stream's first frame resets its Mimi row)."""
        rows = tuple(MimiRow(req.stream, result.codes[i], first=req.num_frames == 0)
                     for i, req in enumerate(result.producers) if not result.eos[i])
        if rows:
            self.mimi.decode(MimiStep(rows))

    def _postprocess(self, plan: SchedulerOutput, result: StepResult) -> list[FinishReason]:
        finished = []
        for req, err in result.failed:
            self._finish(req, FinishReason.ERROR, err)
            finished.append(FinishReason.ERROR)
        for chunk in plan.prefill:
            if not chunk.request.finished:
                chunk.request.num_prefilled = chunk.end
        for i, req in enumerate(result.producers):
            req.status = RequestStatus.DECODING
            if result.eos[i]:
                self._finish(req, FinishReason.EOS)
                finished.append(FinishReason.EOS)
                continue
            req.num_frames += 1
            for fn in self.frame_observers:
                fn(req.label, req.state.last_frame.cpu())
            if req.num_frames >= req.max_frames:
                self._finish(req, FinishReason.LENGTH)
                finished.append(FinishReason.LENGTH)
        return finished

    def _finish(self, req: Request, reason: FinishReason, error: str | None = None,
                violations: tuple[Violation, ...] = ()) -> None:
        if req.finished:
            return
        self.scheduler.finish(req)
        req.finish_reason, req.error, req.violations = reason, error, violations
        req.t_finished = time.monotonic()
        req.state = None
        del self._requests[req.id]
        self.admission.release()
        if error:
            log.warning("request %r ended (%s): %s", req.label, reason.value, error)
        if req.stream is not None:  # it had a slot: its end follows its frames through Mimi and output
            self.mimi.end(StreamEnd(req.stream, reason, error, req.num_frames, req.prompt_len, req.t_arrival,
                                    req.t_admitted, req.t_finished))
            return
        req.sink.push(Finished(
            reason=reason, frames=0, prompt_frames=req.prompt_len, queue_s=req.t_finished - req.t_arrival,
            ttfa_s=None, total_s=req.t_finished - req.t_arrival, watermarked=self.watermarked, error=error,
            violations=violations))

    def _publish(self) -> None:
        running = self.scheduler.running
        prefilling = sum(r.status is RequestStatus.PREFILLING for r in running)
        self.stats = EngineStats(
            slots_in_use=len(running), max_slots=self.scheduler.slots.num_slots,
            requests_waiting=max(0, self.admission.count - len(running)),
            requests_prefilling=prefilling, requests_decoding=len(running) - prefilling,
            requests_paused=sum(r.paused_since is not None for r in running),
        )
