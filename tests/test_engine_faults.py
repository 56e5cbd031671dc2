"""The engine's threads with fake parts injected through `build(config, parts=...)`: a runner
without a model and a Mimi whose audio spells out the codes it decoded, so every stream's
audio can be checked against its own frames; faults raised in each thread (prep, model
step, Mimi, output) ending only their request, leaving no slot and no queued request behind;
and errors escaping a pipeline thread's loop (prep, Mimi, output) stopping the whole engine
at once, with no request left waiting."""

from __future__ import annotations

import math
import queue
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from csm_core.constants import FRAME_SAMPLES, NUM_CODEBOOKS
from csm_core.text import load_tokenizer
from server.engine.config import EngineConfig
from server.engine.engine import build
from server.engine.parts import EngineParts
from server.engine.runner import StepResult
from server.engine.threads import PipelineStopped
from server.engine.types import (
    AudioOut, ContextSegment, EngineUnavailable, Finished, FinishReason, ModelCard, SynthesisParams,
)

SLOTS = 4
BAD_CONTEXT_SAMPLES = 12_345  # the fake Mimi refuses to encode a wave of this length
BAD_OUTPUT_CODE = 1000  # the fake watermarker fails on audio made from this code
BAD_FRAME_SEED = 777  # the fake runner makes malformed frames for this seed
BAD_PREFILL_TEXT = "break my prefill"


def frame_code(seed: int, n: int) -> int:
    """Every codebook of frame n of a request with this seed (the fake runner's output)."""
    return (seed + 7 * n) % 2000


class FakeRunner:
    """The ModelRunner's contract without a model: prompt chunks 'prefill', every decoding
    request makes frame_code(seed, n) in all 32 codebooks, nothing ever ends by EOS."""

    device = torch.device("cpu")
    max_seq = 512
    kv_blocks = None  # no prefix cache
    swap = None  # no preemption

    def drop_swapped(self, req) -> None:
        pass

    def new_state(self, prompt, sampling, seed):
        return SimpleNamespace(seed=seed, prompt=prompt, last_frame=None)

    def run(self, plan) -> StepResult:
        failed = [(c.request, "prefill failed: injected") for c in plan.prefill
                  if c.request.params.text == BAD_PREFILL_TEXT]
        broken = {id(r) for r, _ in failed}
        producers = [c.request for c in plan.prefill if c.completes_prompt and id(c.request) not in broken]
        producers += plan.decode
        if not producers:
            return StepResult([], [], None, failed, {"backbone": 0.0, "depth": 0.0})
        codes = torch.stack([torch.full((NUM_CODEBOOKS,), frame_code(r.state.seed, r.num_frames)) for r in producers])
        for i, r in enumerate(producers):
            r.state.last_frame = codes[i]
        rows = list(codes)
        for i, r in enumerate(producers):
            if r.state.seed == BAD_FRAME_SEED:
                rows[i] = codes[i, :5]  # not a frame: the Mimi thread must fail this stream alone
        result = StepResult(producers, [False] * len(producers), codes, failed, {"backbone": 0.0, "depth": 0.0})
        result.codes = _RowView(codes, rows)
        return result


class _RowView:
    """codes[i] as the runner wants the Mimi thread to see it (one row may be malformed)."""

    def __init__(self, codes, rows):
        self._codes, self._rows = codes, rows

    def __getitem__(self, i):
        return self._rows[i]


class FakeStreamDecoder:
    """Mimi's streaming contract; frame t of a row decodes to 1920 samples of code / 2048."""

    def __init__(self, slots: int, fail_on: set[int]):
        self.slots, self.fail_on = slots, fail_on

    def reset(self, rows: list[int]) -> None:
        pass

    def decode(self, codes: torch.Tensor, active: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        if self.fail_on & set(codes[active][:, 0].flatten().tolist()):
            raise RuntimeError("injected Mimi failure")
        return codes[:, 0, :].float().div(2048).repeat_interleave(FRAME_SAMPLES, dim=1)  # [slots, T * 1920]

    def close(self) -> None:
        pass


class FakeCodec:
    device = torch.device("cpu")

    def __init__(self):
        self.fail_decode_on: set[int] = set()  # codes whose batched decode call raises

    def encode(self, waves):
        if any(len(w) == BAD_CONTEXT_SAMPLES for w in waves):
            raise RuntimeError("injected Mimi encode failure")
        return [torch.zeros(NUM_CODEBOOKS, math.ceil(len(w) / FRAME_SAMPLES), dtype=torch.long) for w in waves]

    def stream_decoder(self, slots: int) -> FakeStreamDecoder:
        return FakeStreamDecoder(slots, self.fail_decode_on)


class FakeWatermarker:
    """Adds nothing; a call fails when any of its audio is made from BAD_OUTPUT_CODE."""

    def apply(self, pcm: torch.Tensor) -> torch.Tensor:
        return self.apply_batch([pcm])[0]

    def apply_batch(self, pcms: list[torch.Tensor]) -> list[torch.Tensor]:
        if any(bool((pcm * 2048).round().eq(BAD_OUTPUT_CODE).any()) for pcm in pcms):
            raise RuntimeError("injected watermark failure")
        return [pcm.clone() for pcm in pcms]

    def replica(self) -> FakeWatermarker:
        return FakeWatermarker()


def fake_engine():
    """A started engine on the fake parts, two output workers."""
    parts = EngineParts(
        runner=FakeRunner(), tokenizer=load_tokenizer("offline"), codec=FakeCodec(), watermarker=FakeWatermarker(),
        card=ModelCard("fake", "custom", True, "cpu", "float32", 0, 0, 0, 0))
    eng = build(EngineConfig(model="fake", max_slots=SLOTS, max_queue=8, torch_threads=1, output_workers=2,
                             watermark_first_chunk_frames=2, watermark_chunk_frames=3), parts=parts)
    eng.start()
    assert eng.wait_ready(30)
    return eng


@pytest.fixture(scope="module")
def engine():
    eng = fake_engine()
    yield eng
    eng.shutdown()


def run(stream) -> tuple[np.ndarray, Finished]:
    pcm, end = [], None
    for ev in stream:
        if isinstance(ev, AudioOut):
            pcm.append(ev.pcm)
        else:
            end = ev
    return (np.concatenate(pcm) if pcm else np.zeros(0, np.float32)), end


def expected_audio(seed: int, frames: int) -> np.ndarray:
    return np.repeat(np.array([frame_code(seed, n) / 2048 for n in range(frames)], np.float32), FRAME_SAMPLES)


def assert_idle(engine) -> None:
    """No slot held and nothing queued once the requests are over."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        s = engine.stats()
        if s.slots_in_use == 0 and s.requests_waiting == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"the engine still holds requests: {engine.stats()}")


def good(seed: int, frames: int = 9) -> SynthesisParams:
    return SynthesisParams(text=f"stream {seed}", seed=seed, max_audio_ms=80 * frames, request_id=f"good-{seed}")


def test_each_stream_gets_exactly_its_own_audio_through_the_real_threads(engine):
    seeds = [10, 20, 30, 40, 50, 60, 70]  # more requests than slots: slots are reused
    streams = [engine.submit(good(s, frames=5 + i)) for i, s in enumerate(seeds)]
    for i, (seed, stream) in enumerate(zip(seeds, streams)):
        audio, end = run(stream)
        assert end.reason is FinishReason.LENGTH and end.frames == 5 + i
        np.testing.assert_array_equal(audio, expected_audio(seed, 5 + i))
    assert_idle(engine)


def faulty(kind: str) -> SynthesisParams:
    if kind == "prep":
        seg = ContextSegment(0, "earlier", np.zeros(BAD_CONTEXT_SAMPLES, np.float32))
        return SynthesisParams(text="bad context", context=(seg,), seed=5, max_audio_ms=800, request_id="bad")
    if kind == "model step":
        return SynthesisParams(text=BAD_PREFILL_TEXT, seed=5, max_audio_ms=800, request_id="bad")
    if kind == "mimi":
        return SynthesisParams(text="bad frames", seed=BAD_FRAME_SEED, max_audio_ms=800, request_id="bad")
    return SynthesisParams(text="bad output", seed=BAD_OUTPUT_CODE - 7 * 3, max_audio_ms=800, request_id="bad")


@pytest.mark.parametrize("kind,message", [
    ("prep", "could not be encoded"),
    ("model step", "prefill failed"),
    ("mimi", "audio decoding failed"),
    ("output", "audio output failed"),
])
def test_a_fault_in_one_thread_ends_only_its_request(engine, kind, message):
    others = [engine.submit(good(s, frames=12)) for s in (100, 200)]
    time.sleep(0.05)  # the others are decoding when the faulty one arrives
    bad = engine.submit(faulty(kind))
    later = engine.submit(good(300, frames=6))
    _, end = run(bad)
    assert end.reason is FinishReason.ERROR and message in end.error, end
    for seed, stream, frames in zip((100, 200, 300), others + [later], (12, 12, 6)):
        audio, fin = run(stream)
        assert fin.reason is FinishReason.LENGTH, fin
        np.testing.assert_array_equal(audio, expected_audio(seed, frames))
    assert_idle(engine)


def test_a_failed_batched_mimi_call_fails_its_streams_and_the_engine_serves_on(engine):
    engine.parts.codec.fail_decode_on.add(frame_code(400, 2))
    try:
        _, end = run(engine.submit(good(400, frames=6)))
    finally:
        engine.parts.codec.fail_decode_on.clear()
    assert end.reason is FinishReason.ERROR and "injected Mimi failure" in end.error
    audio, fin = run(engine.submit(good(500, frames=4)))
    assert fin.reason is FinishReason.LENGTH
    np.testing.assert_array_equal(audio, expected_audio(500, 4))
    assert_idle(engine)


def test_cancel_while_preparing_or_waiting_leaves_nothing_behind(engine):
    running = [engine.submit(good(s, frames=40)) for s in (11, 12, 13, 14)]  # every slot taken
    waiting = [engine.submit(good(s, frames=3)) for s in (15, 16)]
    for stream in waiting + running:
        stream.cancel()
    for stream in waiting + running:
        _, end = run(stream)
        assert end.reason is FinishReason.CANCELLED
    assert_idle(engine)


# -- a pipeline thread that stops stops the engine ----------------------------------------------
class ThreadBug(RuntimeError):
    """Raised where no per-request handling catches it: it escapes the thread's loop."""


def _bug(*args, **kwargs):
    raise ThreadBug("injected pipeline-thread bug")


def end_of(stream, within_s: float = 10.0) -> Finished:
    """The stream's Finished event, skipping its audio; fails if it does not come within `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            ev = stream.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"request {stream.label!r} got no Finished within {within_s:g} s") from None
        if isinstance(ev, Finished):
            return ev


def first_audio(stream) -> None:
    ev = stream.get(timeout=10)
    assert isinstance(ev, AudioOut), ev


# Where the error is injected: a method of the thread's that runs outside any per-request handling,
# and the request whose arrival makes the thread run it (the running streams may be paused by then).
PIPELINE_BUGS = {
    "prep": ("_prep", "_prepare", good(301, frames=4)),  # prepares it
    "mimi decode": ("_mimi", "_gather", good(302, frames=4)),  # its first Mimi call
    "mimi stream end": ("_mimi", "_end", good(303, frames=2)),  # it ends by length: its end is on its way
    "output": ("_output", "_cut_frames", good(304, frames=4)),  # its first decoded frames
}


@pytest.mark.parametrize("where", PIPELINE_BUGS)
def test_an_error_escaping_a_pipeline_thread_stops_the_engine_and_ends_every_request(where):
    engine = fake_engine()
    fatal: list[BaseException] = []
    engine.add_fatal_observer(fatal.append)
    try:
        running = [engine.submit(good(s, frames=300)) for s in (101, 102, 103)]
        for stream in running:
            first_audio(stream)  # decoding, then paused with 10 s of audio unread: in flight until the end
        part, method, trigger = PIPELINE_BUGS[where]
        setattr(getattr(engine, part), method, _bug)
        # The trigger first: reading a running stream would resume it (its reader caught up), and
        # it could then end by length before the engine stops.
        for stream in [engine.submit(trigger)] + running:
            end = end_of(stream)
            assert end.reason is FinishReason.ERROR and "engine stopped" in end.error, (stream.label, end)
        deadline = time.monotonic() + 5
        while not fatal and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # told once, whatever else reports after
        assert len(fatal) == 1 and fatal[0] is engine.failure
        assert isinstance(engine.failure, PipelineStopped) and "injected pipeline-thread bug" in str(engine.failure)
        assert not engine.ready
        with pytest.raises(EngineUnavailable):
            engine.submit(good(305, frames=4))
        # A request that passed the ready check just before the engine stopped is refused at once.
        end = end_of(engine._submit(good(306, frames=4)), within_s=2)
        assert end.reason is FinishReason.ERROR and "engine stopped" in end.error
    finally:
        done = threading.Thread(target=engine.shutdown)
        done.start()
        done.join(30)
    assert not done.is_alive(), "shutdown() did not return"
