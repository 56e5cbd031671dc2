"""csm-bench's reference mode: what the original generator does per request, one at a time."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from csm_bench.measure import StreamTrace, run_entry, to_ms
from csm_core.audio_io import resample
from csm_core.checkpoint import load_model
from csm_core.companions import Companions
from csm_core.constants import CSM_PUBLIC_WATERMARK_KEY, FRAME_MS, MIMI_CODEBOOK_SIZE, SAMPLE_RATE
from csm_core.framing import Segment, build_prompt
from csm_core.generate import generate
from csm_core.mimi import MimiCodec
from csm_core.sampling import SamplingParams
from csm_core.text import load_tokenizer
from csm_core.watermark import Watermarker
from server.engine.types import SynthesisParams


class ReferencePath:
    """The original generator's path, one request at a time, on its own batch-1 model.

    It runs on a thread of its own, as the engine's model does: on a loaded CPU, torch called
    from the main thread was measured 10x and more slower than from a side thread, which
    would make the comparison about threads instead of batching."""

    def __init__(self, model: str, sources: Companions, device: str, dtype: str, prefill_chunk: int):
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="csm-reference")
        self.model = load_model(model, device, dtype).model
        self.device = self.model.audio_head.device
        self.model.setup_caches(1)
        self.model.set_exact(self.device.type == "cpu")  # as the engine does by default
        self.tokenizer = load_tokenizer(sources.tokenizer)
        self.mimi = MimiCodec.load(sources.mimi, self.device)
        self.prefill_chunk = prefill_chunk
        self._watermark_source = sources.watermark
        self._watermarker: Watermarker | None = None

    def watermarker(self) -> Watermarker:
        if self._watermarker is None:
            self._watermarker = Watermarker.load(self._watermark_source, str(self.device), CSM_PUBLIC_WATERMARK_KEY)
        return self._watermarker

    def close(self) -> None:
        self._thread.shutdown()

    def synthesize(self, params: SynthesisParams, watermark: bool) -> tuple[StreamTrace, dict[str, float]]:
        """One request, whole utterance. Returns its trace and its timings (prompt, generate,
        mimi, watermark) in seconds."""
        return self._thread.submit(self._synthesize, params, watermark).result()

    @torch.inference_mode()
    def _synthesize(self, params: SynthesisParams, watermark: bool) -> tuple[StreamTrace, dict[str, float]]:
        t0 = time.perf_counter()
        segments = []
        for seg in params.context:
            codes = None
            if seg.audio is not None:
                wave = resample(torch.from_numpy(seg.audio).float(), seg.sample_rate, SAMPLE_RATE)  # [samples]
                codes = self.mimi.encode([wave.to(self.mimi.device)])[0]  # [32, frames]
            segments.append(Segment(seg.speaker, seg.text, codes))
        prompt = build_prompt(self.tokenizer, segments, params.speaker, params.text)
        t1 = time.perf_counter()
        result = generate(self.model, prompt, max_frames=math.ceil(params.max_audio_ms / FRAME_MS),
                          sampling=SamplingParams(params.temperature, params.top_k), seed=params.seed,
                          prefill_chunk=self.prefill_chunk)
        t2 = time.perf_counter()
        n = result.frames.shape[0]
        pcm = torch.zeros(0)
        if n:
            codes = result.frames.t().unsqueeze(0).clamp(max=MIMI_CODEBOOK_SIZE - 1)  # [1, 32, n]
            pcm = self.mimi.decode(codes)[0].float().cpu()  # [n * 1920]
        t3 = time.perf_counter()
        if watermark and n:
            pcm = self.watermarker().apply(pcm)
        t4 = time.perf_counter()
        trace = StreamTrace(t_submit=t0, arrivals=[t4] if n else [], chunk_frames=[n] if n else [],
                            samples=pcm.numel(), frames=n, finish=result.finish_reason,
                            prompt_positions=result.prompt_frames, t_done=t4)
        return trace, {"prompt": t1 - t0, "generate": t2 - t1, "mimi": t3 - t2, "watermark": t4 - t3}


def run_reference(ref: ReferencePath, requests: list[SynthesisParams], watermark: bool) -> dict:
    done = [ref.synthesize(p, watermark) for p in requests]
    traces = [t for t, _ in done]
    entry = run_entry("reference", 1, watermark, traces, traces[-1].t_done - traces[0].t_submit)
    entry["gap_ms"] = entry["chunk_gap_ms"] = entry["worst_gap_ms"] = None  # whole utterances: there is no stream
    entry["breakdown_ms"] = {k: to_ms(sum(tm[k] for _, tm in done) / len(done)) for k in done[0][1]}  # per request
    return entry
