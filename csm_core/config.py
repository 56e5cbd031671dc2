"""Model configuration: Llama flavors, the CSM config, and the presets.

A preset name (`csm-1b`, `bench`, `tiny`) is a valid model source wherever a checkpoint is:
it means "this architecture with deterministic random weights".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from csm_core.constants import AUDIO_VOCAB_SIZE, NUM_CODEBOOKS, TEXT_VOCAB_SIZE


@dataclass(frozen=True, slots=True)
class LlamaFlavor:
    """One Llama-3.2-style transformer stack (torchtune's llama3_2 builder arguments)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int = 2048
    rope_base: float = 500_000.0
    # Llama-3 RoPE scaling (torchtune Llama3ScaledRoPE / transformers rope_type "llama3")
    rope_scale_factor: float = 32.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if (self.embed_dim // self.num_heads) % 2:
            raise ValueError("head_dim must be even for rotary embeddings")
        for name in ("num_layers", "intermediate_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FLAVORS: dict[str, LlamaFlavor] = {
    # The real CSM-1B stacks (SesameAILabs/csm models.py).
    "llama-1B": LlamaFlavor(num_layers=16, num_heads=32, num_kv_heads=8, embed_dim=2048, intermediate_dim=8192),
    "llama-100M": LlamaFlavor(num_layers=4, num_heads=8, num_kv_heads=2, embed_dim=1024, intermediate_dim=8192),
    # Benchmark / offline demo: one CPU stream runs faster than real time on 2 cores. Small GEMMs
    # on CPU are memory-bandwidth bound, so the weights read per frame set the speed.
    "bench-backbone": LlamaFlavor(num_layers=4, num_heads=6, num_kv_heads=2, embed_dim=384, intermediate_dim=1024),
    "bench-decoder": LlamaFlavor(num_layers=1, num_heads=4, num_kv_heads=2, embed_dim=64, intermediate_dim=256),
    # Tests: the whole suite runs in minutes on 2 cores.
    "tiny-backbone": LlamaFlavor(
        num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64, intermediate_dim=128, max_seq_len=512
    ),
    "tiny-decoder": LlamaFlavor(
        num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=64
    ),
}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """CSM's config: the five keys of the original config.json plus the resolved flavors."""

    backbone_flavor: str
    decoder_flavor: str
    text_vocab_size: int = TEXT_VOCAB_SIZE
    audio_vocab_size: int = AUDIO_VOCAB_SIZE
    audio_num_codebooks: int = NUM_CODEBOOKS
    backbone: LlamaFlavor = field(default=None)  # type: ignore[assignment]
    decoder: LlamaFlavor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for attr, name in (("backbone", self.backbone_flavor), ("decoder", self.decoder_flavor)):
            if getattr(self, attr) is None:
                if name not in FLAVORS:
                    raise ValueError(f"unknown flavor {name!r}: known flavors are {sorted(FLAVORS)}")
                object.__setattr__(self, attr, FLAVORS[name])
        if self.audio_num_codebooks != NUM_CODEBOOKS:
            raise ValueError(f"audio_num_codebooks must be {NUM_CODEBOOKS} (Mimi's codebooks)")
        if self.audio_vocab_size != AUDIO_VOCAB_SIZE:
            raise ValueError(f"audio_vocab_size must be {AUDIO_VOCAB_SIZE}")
        if self.text_vocab_size <= 128001:
            raise ValueError("text_vocab_size must hold the Llama-3 special ids 128000/128001")
        if self.decoder.max_seq_len < self.audio_num_codebooks:
            raise ValueError("decoder max_seq_len must hold one frame of codebooks")

    def to_json_dict(self) -> dict:
        """config.json of the original layout; custom flavors are written out in full."""
        out = {
            "backbone_flavor": self.backbone_flavor,
            "decoder_flavor": self.decoder_flavor,
            "text_vocab_size": self.text_vocab_size,
            "audio_vocab_size": self.audio_vocab_size,
            "audio_num_codebooks": self.audio_num_codebooks,
        }
        for attr, name in (("backbone", self.backbone_flavor), ("decoder", self.decoder_flavor)):
            if FLAVORS.get(name) != getattr(self, attr):
                out[attr] = getattr(self, attr).to_dict()
        return out

    @classmethod
    def from_json_dict(cls, d: dict) -> ModelConfig:
        missing = [k for k in ("backbone_flavor", "decoder_flavor") if k not in d]
        if missing:
            raise ValueError(f"config.json lacks {missing}")
        kw = {k: d[k] for k in ("text_vocab_size", "audio_vocab_size", "audio_num_codebooks") if k in d}
        flavors = {a: LlamaFlavor(**d[a]) for a in ("backbone", "decoder") if isinstance(d.get(a), dict)}
        return cls(backbone_flavor=d["backbone_flavor"], decoder_flavor=d["decoder_flavor"], **kw, **flavors)


PRESETS: dict[str, ModelConfig] = {
    "csm-1b": ModelConfig(backbone_flavor="llama-1B", decoder_flavor="llama-100M"),
    "bench": ModelConfig(backbone_flavor="bench-backbone", decoder_flavor="bench-decoder"),
    "tiny": ModelConfig(backbone_flavor="tiny-backbone", decoder_flavor="tiny-decoder"),
}


def preset_name(config: ModelConfig) -> str:
    """The preset this config matches, or "custom"."""
    for name, preset in PRESETS.items():
        if preset == config:
            return name
    return "custom"
