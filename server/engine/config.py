"""Engine configuration: one dataclass, validated on construction, mirrored by csm-serve flags."""

from __future__ import annotations

from dataclasses import dataclass

from csm_core.constants import CSM_PUBLIC_WATERMARK_KEY, QUANTIZE_MODES


@dataclass(slots=True)
class EngineConfig:
    model: str = "bench"  # preset name, local checkpoint dir or hub id
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"  # backbone and depth decoder weights: none, int8-weight, float8 (csm_core/quantize.py)
    max_slots: int = 8  # requests decoded together (rows of the backbone KV cache)
    max_queue: int = 64  # requests that may wait for a slot; more -> QueueFull
    watermark: bool = True
    watermark_key: tuple[int, ...] = CSM_PUBLIC_WATERMARK_KEY
    watermark_weights: str | None = None  # dir / hub id; None: hub for real models, random for presets
    mimi_weights: str | None = None  # file / dir / hub id; None: hub for real models, random for presets
    tokenizer: str | None = None  # tokenizer.json / dir / hub id; None: offline for presets, Llama-3.2 otherwise
    # Scheduling
    prefill_chunk: int = 64  # prompt positions per prefill call (chunks are aligned to multiples)
    # Prompt positions prefilled per engine step, across requests, while streams are decoding:
    # what a step may add to their frame gap (~0.5 ms per position per thread on the bench preset;
    # on CPU the engine's slack while it waits for Mimi absorbs most of it).
    prefill_budget: int = 128
    idle_prefill_budget: int = 512  # the same when no stream is decoding (nobody to delay)
    max_seq_len: int | None = None  # backbone positions per slot (default: the model's)
    # Prefix cache: device memory for the backbone KV rows of prompt prefixes (voices, repeated
    # context), in whole prefill chunks, least recently used evicted; 0: off
    # (server/engine/prefix_cache.py). csm-1b keeps 32 KiB per position in bf16, 64 KiB in fp32.
    prefix_cache_mb: int = 512
    # Conversations (Converse): how many may be open, how long one may go without a turn before
    # its slot is given back (its context stays, as codes), and how long one may last (0: no limit).
    max_conversations: int = 16
    conversation_idle_s: float = 30.0
    conversation_max_lifetime_s: float = 3600.0
    exact: bool | None = None  # batch-invariant numerics (default: on for CPU)
    cuda_graphs: bool = True  # CUDA: replay each step (backbone position, frame) from graphs per batch bucket
    # CPU: intra-op threads of each pipeline thread (model, Mimi, output, context prep). They run
    # concurrently, so each gets a share of the cores; None: half the usable cores (at least 1).
    torch_threads: int | None = None
    # Most steps Mimi merges into one call when it falls behind (per stream-frame at batch 8 on
    # 2 cores: ~13 ms with 1 frame per call, ~8.5 ms with 4); also the steps that may wait for it
    # (the engine is paced to Mimi's speed: server/engine/pacing.py).
    mimi_frames_per_call: int = 4
    # Output threads (watermark, resampling); streams are spread over them by slot. None: on CPU
    # with the watermark on, one per torch_threads share of the cores; otherwise 1.
    output_workers: int | None = None
    # Flow control: a request whose reader has more than stream_buffer_s of audio unread makes no
    # frames until it has caught up to half of that (0: never pause); one paused for more than
    # reader_stall_s ends as STALLED (0: never), so a stalled reader cannot hold a slot forever.
    stream_buffer_s: float = 10.0
    reader_stall_s: float = 30.0
    # Preemption (server/engine/preemption.py): a stream whose reader has at least preempt_ahead_s
    # of audio unread, or has left some unread for preempt_grace_s without a break (its transport's
    # window is full), gives its slot to a waiting request; its KV waits in host memory
    # (preempt_swap_mb in all) and it resumes exactly where it stopped once its reader is down to
    # half of that (all of it, after the grace rule). At most preempt_max streams are preempted at once (default: max_slots; 0 or
    # preempt_swap_mb 0: never); each keeps its Mimi row, so Mimi has max_slots + preempt_max rows.
    preempt_ahead_s: float = 2.0
    preempt_grace_s: float = 0.5  # 0: only the ahead rule
    preempt_swap_mb: int = 1024
    preempt_max: int | None = None
    # Output
    watermark_first_chunk_frames: int = 3  # first watermarked chunk: small for time to first audio
    watermark_chunk_frames: int = 12  # later chunks (~1 s carries silentcipher's whole message)
    # Request limits
    max_text_chars: int = 2000
    max_context_segments: int = 16
    max_speaker_id: int = 31
    max_audio_ms: int = 90_000
    default_max_audio_ms: int = 20_000  # ceiling of the text-derived default length (rules.default_audio_ms)
    max_context_audio_s: float = 120.0
    max_request_id_chars: int = 128
    seed: int = 0  # seed of random weights for presets

    def __post_init__(self) -> None:
        positive = ("max_slots", "prefill_chunk", "prefill_budget", "watermark_first_chunk_frames",
                    "watermark_chunk_frames", "max_text_chars", "max_audio_ms", "default_max_audio_ms",
                    "max_request_id_chars")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {self.quantize!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError("torch_threads must be >= 1")
        if self.output_workers is not None and self.output_workers < 1:
            raise ValueError("output_workers must be >= 1")
        if self.mimi_frames_per_call < 1:
            raise ValueError("mimi_frames_per_call must be >= 1")
        if self.stream_buffer_s < 0 or self.reader_stall_s < 0:
            raise ValueError("stream_buffer_s and reader_stall_s must be >= 0")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.preempt_max is None:
            self.preempt_max = self.max_slots
        for name in ("prefix_cache_mb", "max_conversations", "conversation_idle_s", "conversation_max_lifetime_s",
                     "preempt_ahead_s", "preempt_grace_s", "preempt_swap_mb", "preempt_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.prefill_budget < self.prefill_chunk:
            raise ValueError("prefill_budget must be at least prefill_chunk")
        if self.idle_prefill_budget < self.prefill_budget:
            raise ValueError("idle_prefill_budget must be at least prefill_budget")
        if self.default_max_audio_ms > self.max_audio_ms:
            raise ValueError("default_max_audio_ms must not exceed max_audio_ms")
        if len(self.watermark_key) != 5 or not all(0 <= k <= 255 for k in self.watermark_key):
            raise ValueError("watermark_key must be 5 integers in [0, 255]")
