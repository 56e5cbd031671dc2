"""The engine's parts, loaded once from an EngineConfig: the model runner (model + KV cache),
the tokenizer, Mimi, the watermarker, and what the engine reports about them.

`build(config, parts=...)` (server/engine/engine.py) takes parts from here by default; a test
hands in its own (a fake runner, a Mimi that fails on cue) through the same seam.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch

from csm_core.checkpoint import load_model
from csm_core.companions import companions_for, loading
from csm_core.constants import FRAME_RATE_HZ, FRAME_SAMPLES, NUM_CODEBOOKS, SAMPLE_RATE
from csm_core.mimi import MimiCodec
from csm_core.text import TextTokenizer, load_tokenizer
from csm_core.watermark import Watermarker
from server.engine.config import EngineConfig
from server.engine.runner import ModelRunner
from server.engine.types import EngineInfo, EngineLimits, ModelCard

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineParts:
    runner: ModelRunner  # anything with max_seq, device, kv_blocks, new_state(), run()
    tokenizer: TextTokenizer
    codec: MimiCodec  # anything with device, encode(), stream_decoder()
    watermarker: Watermarker | None
    card: ModelCard

    @property
    def device(self) -> torch.device:
        return torch.device(self.runner.device)


@dataclass(frozen=True, slots=True)
class VoiceParts:
    """What encodes and measures a voice as the engine encodes and frames context audio."""

    codec: MimiCodec
    tokenizer: TextTokenizer
    torch_threads: int | None  # intra-op threads of the encoder's thread, as each pipeline thread's


def load_parts(config: EngineConfig) -> EngineParts:
    lm = load_model(config.model, config.device, config.dtype, seed=config.seed, quantize=config.quantize)
    model = lm.model
    device = model.audio_head.device
    model.set_exact(config.exact if config.exact is not None else device.type == "cpu")
    if lm.random_weights:
        log.warning(
            "MODEL %r HAS RANDOM WEIGHTS: the audio it generates is NOISE (offline demo / benchmark). "
            "Pass --model sesame/csm-1b (or a local checkpoint) for speech.", config.model,
        )
    parts = companions_for(config.model, tokenizer=config.tokenizer, mimi=config.mimi_weights,
                           watermark=config.watermark_weights)
    with loading("tokenizer", parts.tokenizer, "--tokenizer"):
        tokenizer = load_tokenizer(parts.tokenizer)
    with loading("Mimi weights", parts.mimi, "--mimi-weights"):
        codec = MimiCodec.load(parts.mimi, device)
    watermarker = None
    if config.watermark:
        with loading("watermark weights", parts.watermark, "--watermark-weights"):
            watermarker = Watermarker.load(parts.watermark, str(device), key=tuple(config.watermark_key))
    backbone, decoder = lm.config.backbone, lm.config.decoder
    max_seq = min(config.max_seq_len or backbone.max_seq_len, backbone.max_seq_len)
    card = ModelCard(
        model_source=config.model, preset=lm.preset, random_weights=lm.random_weights, device=str(device),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        backbone_layers=backbone.num_layers, backbone_dim=backbone.embed_dim,
        decoder_layers=decoder.num_layers, decoder_dim=decoder.embed_dim,
    )
    return EngineParts(
        runner=ModelRunner(model, config.max_slots, max_seq, config.cuda_graphs,
                           prefix_cache_bytes=config.prefix_cache_mb * 2**20, prefill_chunk=config.prefill_chunk,
                           swap_bytes=config.preempt_swap_mb * 2**20 if config.preempt_max else 0),
        tokenizer=tokenizer, codec=codec, watermarker=watermarker, card=card,
    )


def engine_info(config: EngineConfig, parts: EngineParts) -> EngineInfo:
    limits = EngineLimits(
        max_slots=config.max_slots, max_queue=config.max_queue, max_seq_len=parts.runner.max_seq,
        max_text_chars=config.max_text_chars, max_context_segments=config.max_context_segments,
        max_speaker_id=config.max_speaker_id, max_audio_ms=config.max_audio_ms,
        default_max_audio_ms=config.default_max_audio_ms, max_context_audio_s=config.max_context_audio_s,
        max_request_id_chars=config.max_request_id_chars, max_conversations=config.max_conversations,
        conversation_idle_s=config.conversation_idle_s, conversation_max_lifetime_s=config.conversation_max_lifetime_s,
    )
    card = {f.name: getattr(parts.card, f.name) for f in fields(ModelCard)}
    return EngineInfo(**card, num_codebooks=NUM_CODEBOOKS, sample_rate=SAMPLE_RATE, frame_rate_hz=FRAME_RATE_HZ,
                      frame_samples=FRAME_SAMPLES, watermark_enabled=parts.watermarker is not None, limits=limits)
