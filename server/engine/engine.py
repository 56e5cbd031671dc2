"""The engine: one thread that owns the model and steps every active request together.

    step():  schedule()  ->  runner.run()  ->  postprocess()

`submit` (any thread) validates a request, tokenizes it and queues it; the engine thread
Mimi-encodes context audio, admits requests into free slots and streams their audio.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable

import torch

from csm_core.audio_io import resample
from csm_core.checkpoint import load_model
from csm_core.constants import FRAME_MS, FRAME_RATE_HZ, FRAME_SAMPLES, NUM_CODEBOOKS, SAMPLE_RATE
from csm_core.framing import Segment, audio_prompt_len, build_prompt
from csm_core.generate import check_fits
from csm_core.mimi import DEFAULT_REPO as MIMI_HUB_REPO
from csm_core.mimi import MimiCodec
from csm_core.sampling import SamplingParams
from csm_core.text import DEFAULT_TOKENIZER, OFFLINE_TOKENIZER, load_tokenizer
from csm_core.watermark import HUB_REPO as WATERMARK_HUB_REPO
from csm_core.watermark import Watermarker
from server.engine.audio import AudioDecoder
from server.engine.config import EngineConfig
from server.engine.output import OutputStage
from server.engine.request import Request, RequestStatus
from server.engine.runner import ModelRunner
from server.engine.scheduler import Scheduler
from server.engine.stream import RequestStream
from server.engine.types import (
    EngineInfo, EngineLimits, EngineStats, EngineUnavailable, FinishReason, InvalidRequest, QueueFull,
    StepStats, SynthesisParams, Violation,
)

log = logging.getLogger(__name__)

# Niceness of the context-audio thread: the lowest, so that on a busy CPU the running streams
# come first (SCHED_IDLE would starve context requests on a saturated server).
PREP_NICE = 19


def stage_threads(configured: int | None, device: torch.device) -> int | None:
    """Intra-op threads for each pipeline thread. On CPU the model, Mimi and output threads run
    at the same time: with all cores each, their thread pools oversubscribe the CPU and spin
    against each other (measured on 2 cores: ~25 % fewer frames/s than one thread each).
    None on accelerators: their host threads mostly launch kernels; torch's default stands."""
    if configured is not None:
        return configured
    if device.type != "cpu":
        return None
    return max(1, usable_cores() // 2)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        lm = load_model(config.model, config.device, config.dtype, seed=config.seed, quantize=config.quantize)
        self.loaded = lm
        model = lm.model
        device = model.audio_head.device
        exact = config.exact if config.exact is not None else device.type == "cpu"
        model.set_exact(exact)
        is_preset = lm.layout == "preset"
        if is_preset:
            log.warning(
                "MODEL %r HAS RANDOM WEIGHTS: the audio it generates is NOISE (offline demo / benchmark). "
                "Pass --model sesame/csm-1b (or a local checkpoint) for speech.", config.model,
            )
        # Presets get offline parts; real checkpoints get the real ones (hub or local)
        self.tokenizer = load_tokenizer(config.tokenizer or (OFFLINE_TOKENIZER if is_preset else DEFAULT_TOKENIZER))
        mimi_src = config.mimi_weights or ("random" if is_preset else MIMI_HUB_REPO)
        self.mimi = MimiCodec.load(mimi_src, device)
        self.watermarker = None
        if config.watermark:
            wm_src = config.watermark_weights or ("random" if is_preset else WATERMARK_HUB_REPO)
            self.watermarker = Watermarker.load(wm_src, str(device), key=tuple(config.watermark_key))
        max_seq = min(config.max_seq_len or lm.config.backbone.max_seq_len, lm.config.backbone.max_seq_len)
        self.runner = ModelRunner(model, config.max_slots, max_seq, config.cuda_graphs)
        self.scheduler = Scheduler(config.max_slots, config.prefill_chunk, config.prefill_budget,
                                   config.idle_prefill_budget)
        def fail(req: Request, error: str) -> None:
            self._cancel(req.id, error)

        self.torch_threads = stage_threads(config.torch_threads, device)
        self.output_workers = config.output_workers or (
            max(1, usable_cores() // self.torch_threads) if self.watermarker and self.torch_threads else 1)
        self.output = OutputStage(self.watermarker, config.watermark_first_chunk_frames,
                                  config.watermark_chunk_frames, on_error=fail, torch_threads=self.torch_threads,
                                  workers=self.output_workers)
        self.audio = AudioDecoder(self.mimi, config.max_slots, self.output, on_error=fail,
                                  max_frames_per_call=config.mimi_frames_per_call, torch_threads=self.torch_threads)
        self.limits = EngineLimits(
            max_slots=config.max_slots, max_queue=config.max_queue, max_seq_len=max_seq,
            max_text_chars=config.max_text_chars, max_context_segments=config.max_context_segments,
            max_speaker_id=config.max_speaker_id, max_audio_ms=config.max_audio_ms,
            default_max_audio_ms=config.default_max_audio_ms, max_context_audio_s=config.max_context_audio_s,
        )
        self._info = EngineInfo(
            model_source=config.model, preset=lm.preset, random_weights=lm.random_weights, device=str(device),
            dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
            backbone_layers=lm.config.backbone.num_layers, backbone_dim=lm.config.backbone.embed_dim,
            decoder_layers=lm.config.decoder.num_layers, decoder_dim=lm.config.decoder.embed_dim,
            num_codebooks=NUM_CODEBOOKS, sample_rate=SAMPLE_RATE, frame_rate_hz=FRAME_RATE_HZ,
            frame_samples=FRAME_SAMPLES, watermark_enabled=self.watermarker is not None, limits=self.limits,
        )
        self._incoming: queue.SimpleQueue[Request | None] = queue.SimpleQueue()  # -> prep thread
        self._ready_reqs: queue.SimpleQueue[Request] = queue.SimpleQueue()  # prepared -> engine thread
        self._cancelled: dict[str, tuple[float, str | None]] = {}  # request id -> (when, error or None)
        self._lock = threading.Lock()
        self._num_queued = 0  # submitted, not yet admitted
        self._wakeup = threading.Event()
        self._observers: list[Callable[[StepStats], None]] = []
        self._frame_observers: list[Callable[[str, torch.Tensor], None]] = []
        self._thread: threading.Thread | None = None
        self._stop = False
        self._ready = threading.Event()
        self._accepting = False
        self._requests: dict[str, Request] = {}  # engine thread only

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="csm-engine", daemon=True)
        self._thread.start()
        threading.Thread(target=self._prep_loop, name="csm-prep", daemon=True).start()
        threading.Thread(target=self._warm_up, name="csm-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        t0 = time.monotonic()
        stream = self._enqueue(SynthesisParams(text="warm up", max_audio_ms=2 * FRAME_MS, seed=0, request_id="warmup"))
        for _ in stream:
            pass
        self._accepting = True
        self._ready.set()
        log.info("engine ready in %.1f s (%s, %s, %d slots)", time.monotonic() - t0, self._info.device,
                 self._info.dtype, self.config.max_slots)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._accepting

    def drain(self, grace_s: float) -> bool:
        """Stop admitting new work; wait up to grace_s for in-flight requests to finish."""
        self._accepting = False
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self._num_queued == 0 and not self.scheduler.running:
                self.audio.flush()
                return True
            time.sleep(0.05)
        return False

    def shutdown(self) -> None:
        self._accepting = False
        self._stop = True
        self._incoming.put(None)
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.audio.close()
        self.output.close()

    def add_step_observer(self, fn: Callable[[StepStats], None]) -> None:
        self._observers.append(fn)

    def add_frame_observer(self, fn: Callable[[str, torch.Tensor], None]) -> None:
        """fn(request_id, codes [32] on CPU) for every generated frame (debugging, tests)."""
        self._frame_observers.append(fn)

    def info(self) -> EngineInfo:
        return self._info

    def stats(self) -> EngineStats:
        running = list(self.scheduler.running)
        prefilling = sum(r.status is RequestStatus.PREFILLING for r in running)
        return EngineStats(
            slots_in_use=len(running), max_slots=self.config.max_slots, requests_waiting=self._num_queued,
            requests_prefilling=prefilling, requests_decoding=len(running) - prefilling,
        )

    # -- submission (any thread) -------------------------------------------------------
    def submit(self, params: SynthesisParams) -> RequestStream:
        if not self.ready:
            raise EngineUnavailable("the server is warming up or draining; retry shortly or on another replica")
        return self._enqueue(params)

    def _enqueue(self, params: SynthesisParams) -> RequestStream:
        prompt_len, max_frames = self._validate(params)
        with self._lock:
            if self._num_queued >= self.config.max_queue + self.scheduler.slots.num_slots - len(self.scheduler.running):
                retry = max(1.0, self._num_queued * 0.5)
                raise QueueFull(f"{self._num_queued} requests are waiting (limit {self.config.max_queue}); "
                                f"retry in about {retry:.0f} s or use another replica", retry)
            self._num_queued += 1
        rid = params.request_id or uuid.uuid4().hex
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        stream = RequestStream(rid, self._cancel)
        req = Request(id=rid, params=params, stream=stream, prompt_len=prompt_len, max_frames=max_frames, seed=seed)
        self._incoming.put(req)
        return stream

    def _cancel(self, request_id: str, error: str | None = None) -> None:
        """Stop a request at the next step: cancelled by its caller, or failed (error) elsewhere."""
        with self._lock:
            self._cancelled[request_id] = (time.monotonic(), error)
        self._wakeup.set()

    def _validate(self, p: SynthesisParams) -> tuple[int, int]:
        """Checks everything that can be known before the engine thread sees the request.
        Returns (estimated prompt length, max frames)."""
        lim, v = self.limits, []
        if not p.text.strip():
            v.append(Violation("text", "must not be empty"))
        elif len(p.text) > lim.max_text_chars:
            v.append(Violation("text", f"{len(p.text)} characters; at most {lim.max_text_chars} are accepted"))
        if not 0 <= p.speaker <= lim.max_speaker_id:
            v.append(Violation("speaker", f"{p.speaker} is outside [0, {lim.max_speaker_id}]"))
        try:
            SamplingParams(p.temperature, p.top_k)
        except ValueError as e:
            field = "sampling.temperature" if "temperature" in str(e) else "sampling.top_k"
            v.append(Violation(field, str(e)))
        max_ms = p.max_audio_ms if p.max_audio_ms is not None else lim.default_max_audio_ms
        if not FRAME_MS <= max_ms <= lim.max_audio_ms:
            v.append(Violation("max_audio_ms", f"{max_ms} is outside [{FRAME_MS}, {lim.max_audio_ms}]"))
        if not 8000 <= p.output_sample_rate <= 48000:
            v.append(Violation("output.sample_rate", f"{p.output_sample_rate} Hz is outside [8000, 48000]"))
        if len(p.context) > lim.max_context_segments:
            v.append(Violation("context", f"{len(p.context)} segments; at most {lim.max_context_segments}"))
        prompt_len = len(self.tokenizer.encode_turn(p.speaker, p.text))
        for i, seg in enumerate(p.context[: lim.max_context_segments]):
            if not seg.text.strip():
                v.append(Violation(f"context[{i}].text", "must not be empty"))
            if not 0 <= seg.speaker <= lim.max_speaker_id:
                v.append(Violation(f"context[{i}].speaker", f"{seg.speaker} is outside [0, {lim.max_speaker_id}]"))
            prompt_len += len(self.tokenizer.encode_turn(seg.speaker, seg.text))
            if seg.audio is not None:
                seconds = len(seg.audio) / seg.sample_rate if seg.sample_rate > 0 else 0
                if seg.audio.ndim != 1 or len(seg.audio) == 0:
                    v.append(Violation(f"context[{i}].audio", "must be non-empty mono audio"))
                elif seconds > lim.max_context_audio_s:
                    v.append(Violation(f"context[{i}].audio",
                                       f"{seconds:.1f} s is longer than the {lim.max_context_audio_s:.0f} s accepted"))
                else:
                    prompt_len += audio_prompt_len(math.ceil(seconds * SAMPLE_RATE / FRAME_SAMPLES))
        max_frames = max_ms // FRAME_MS  # max_audio_ms is an upper bound
        if not v and prompt_len + max_frames > lim.max_seq_len:
            room = (lim.max_seq_len - prompt_len) * FRAME_MS
            hint = (f"lower max_audio_ms to at most {room}" if room >= FRAME_MS
                    else "shorten the context (fewer or shorter segments)")
            v.append(Violation("max_audio_ms", f"the prompt takes {prompt_len} of {lim.max_seq_len} positions and "
                                               f"{max_frames} frames do not fit: {hint}"))
        if v:
            raise InvalidRequest(v)
        return prompt_len, max_frames

    # -- engine thread -----------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        while not self._stop:
            self._intake()
            self._apply_cancellations()
            if not self.scheduler.running and not self.scheduler.waiting:
                self._wakeup.wait(0.1)
                self._wakeup.clear()
                continue
            try:
                self.step()
            except Exception:  # a fault in the batched step: fail the batch, keep serving
                log.exception("engine step failed; failing the requests in flight")
                for req in list(self.scheduler.running):
                    self._finish(req, FinishReason.ERROR, "internal error in the engine step")
        for req in list(self._requests.values()):
            self._finish(req, FinishReason.CANCELLED, "server shut down")

    def step(self) -> StepStats:
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        for req in plan.admitted:
            req.t_admitted = time.monotonic()
            with self._lock:
                self._num_queued -= 1
        result = self.runner.run(plan)
        t_mimi = time.perf_counter()
        # A new stream's Mimi row is reset right before its first frame, not at admission: a
        # reset ends a merged Mimi call, and the others' calls need not end while it prefills.
        for req in result.producers:
            if req.num_frames == 0:
                self.audio.reset(req.slot)
        if result.producers:
            self.audio.decode(result.producers, result.codes, result.eos)  # paced to Mimi: may wait
        result.timings["mimi"] = time.perf_counter() - t_mimi
        finished = self._postprocess(plan, result)
        stats = StepStats(
            duration_s=time.perf_counter() - t0, decoding=len(result.producers),
            prefill_tokens=plan.num_prefill_tokens, frames=sum(not e for e in result.eos),
            breakdown_s={**result.timings, "other": (time.perf_counter() - t0) - sum(result.timings.values())},
            finished=tuple(finished),
        )
        for fn in self._observers:
            fn(stats)
        return stats

    def _postprocess(self, plan, result) -> list[FinishReason]:
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
            for fn in self._frame_observers:
                fn(req.id, req.state.last_frame.cpu())
            if req.num_frames >= req.max_frames:
                self._finish(req, FinishReason.LENGTH)
                finished.append(FinishReason.LENGTH)
        return finished

    def _finish(self, req: Request, reason: FinishReason, error: str | None = None) -> None:
        if req.finished:
            return
        if req.status is RequestStatus.WAITING and req in self.scheduler.waiting:
            with self._lock:
                self._num_queued -= 1
        self.scheduler.finish(req)
        req.finish_reason, req.error = reason, error
        req.t_finished = time.monotonic()
        req.state = None
        self._requests.pop(req.id, None)
        if error:
            log.warning("request %s failed: %s", req.id, error)
        self.audio.finish(req)  # after the request's last frames

    def _intake(self) -> None:
        """Take prepared requests into the scheduler (engine thread)."""
        while True:
            try:
                req = self._ready_reqs.get_nowait()
            except queue.Empty:
                return
            if not req.finished:
                self._requests[req.id] = req
                self.scheduler.add(req)

    def _prep_loop(self) -> None:
        """Prep thread: context audio is resampled and Mimi-encoded here, off the engine thread,
        so a long context never stalls the streams being decoded. The thread runs at a lower CPU
        priority (Linux: per-thread nice), so on a busy CPU the running streams come first."""
        torch.set_grad_enabled(False)
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREP_NICE)
        except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
            pass
        while True:
            first = self._incoming.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    nxt = self._incoming.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._incoming.put(None)
                    break
                batch.append(nxt)
            self._prepare(batch)
            self._wakeup.set()

    def _prepare(self, reqs: list[Request]) -> None:
        """Resample and Mimi-encode context audio (one batched call), build prompts (prep thread)."""
        waves, keys = [], []
        for req in reqs:
            for i, seg in enumerate(req.params.context):
                if seg.audio is not None:
                    try:
                        waves.append(resample(torch.from_numpy(seg.audio).float(), seg.sample_rate, SAMPLE_RATE))
                        keys.append((req, i))
                    except Exception as e:
                        self._fail_unqueued(req, f"context[{i}].audio could not be resampled: {e}")
        codes: dict[tuple[int, int], torch.Tensor] = {}
        try:
            encoded = self.mimi.encode([w.to(self.mimi.device) for w in waves]) if waves else []
            codes = {(id(r), i): c for (r, i), c in zip(keys, encoded)}
        except Exception:
            for w, (req, i) in zip(waves, keys):  # one at a time, to fail only the bad one
                try:
                    codes[(id(req), i)] = self.mimi.encode([w.to(self.mimi.device)])[0]
                except Exception as e:
                    self._fail_unqueued(req, f"context[{i}].audio could not be encoded: {e}")
        for req in reqs:
            segs = [Segment(seg.speaker, seg.text, codes.get((id(req), i)) if seg.audio is not None else None)
                    for i, seg in enumerate(req.params.context)]
            if req.finished:
                continue
            try:
                prompt = build_prompt(self.tokenizer, segs, req.params.speaker, req.params.text)
                check_fits(self.runner.model, len(prompt), req.max_frames)  # exact length, after encoding
                req.prompt_len = len(prompt)
                sampling = SamplingParams(req.params.temperature, req.params.top_k)
                self.runner.start_request(req, prompt, sampling)
            except Exception as e:
                self._fail_unqueued(req, f"request could not be prepared: {e}")
                continue
            self._ready_reqs.put(req)

    def _fail_unqueued(self, req: Request, error: str) -> None:
        if req.finished:
            return
        with self._lock:
            self._num_queued -= 1
        req.status = RequestStatus.FINISHED
        req.finish_reason, req.error, req.t_finished = FinishReason.ERROR, error, time.monotonic()
        log.warning("request %s failed: %s", req.id, error)
        self.output.finish(req)

    def _apply_cancellations(self) -> None:
        now = time.monotonic()
        with self._lock:
            pending = list(self._cancelled.items())
        for rid, (t, error) in pending:
            req = self._requests.get(rid)
            if req is not None:
                self._finish(req, FinishReason.ERROR if error else FinishReason.CANCELLED, error)
            if req is not None or now - t > 60:  # unknown ids may still be in the prep thread
                with self._lock:
                    self._cancelled.pop(rid, None)
