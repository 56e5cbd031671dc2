"""Loading and writing CSM checkpoints.

Sources: a preset name (random weights of that architecture), a local directory, or a hub id.
Layouts:
- original (`sesame/csm-1b`): config.json with backbone_flavor/decoder_flavor/... and
  model.safetensors (early release: ckpt.pt); torchtune parameter names.
- transformers (`CsmForConditionalGeneration`): config.json with model_type "csm", safetensors
  (single or sharded); q/k rows permuted for rotate-half RoPE, undone here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from csm_core.config import FLAVORS, PRESETS, LlamaFlavor, ModelConfig, preset_name
from csm_core.hub import download_checkpoint
from csm_core.model import CSMModel

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "ckpt.pt")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the architecture; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: CSMModel
    config: ModelConfig
    source: str
    preset: str  # preset the config matches, or "custom"
    random_weights: bool
    layout: str  # "preset" | "original" | "transformers"


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


# -- public API ----------------------------------------------------------------------------
def load_model(source: str, device: str = "cpu", dtype: str = "float32", seed: int = 0,
               quantize: str = "none") -> LoadedModel:
    """quantize: none, int8-weight or float8 (csm_core/quantize.py), checked before any weight loads."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    quantizer = None
    if quantize != "none":
        from csm_core import quantize as quantizer  # torchao is imported only when it is used

        quantizer.check_quantize(quantize, dev, dt)
    if source in PRESETS:
        model = random_model(PRESETS[source], seed)
        loaded = LoadedModel(_place(model, dev, dt), model.config, source, source, True, "preset")
    else:
        path = Path(source)
        if not path.exists():
            if source.startswith((".", "/", "~")) or source.count("/") != 1:
                raise FileNotFoundError(
                    f"model source {source!r} is neither a preset ({', '.join(PRESETS)}), a local directory, "
                    f"nor a hub id"
                )
            path = download_checkpoint(source)
        model, layout = _load_dir(path)
        loaded = LoadedModel(_place(model, dev, dt), model.config, source, preset_name(model.config), False, layout)
    if quantizer is not None:
        quantizer.quantize_model(loaded.model, quantize)
    return loaded


def random_model(config: ModelConfig, seed: int = 0) -> CSMModel:
    """The architecture with deterministic random weights (global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CSMModel(config)
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                torch.nn.init.ones_(p)
            else:
                torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def save_original(model: CSMModel, directory: str | Path, *, legacy_ckpt: bool = False) -> Path:
    """Write the original layout: config.json + model.safetensors (or the early ckpt.pt)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config.to_json_dict(), indent=2))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # unshare fused views
    if legacy_ckpt:
        torch.save(state, out / "ckpt.pt")
    else:
        save_file(state, str(out / "model.safetensors"))
    return out


# -- internals -----------------------------------------------------------------------------
def _place(model: CSMModel, device: torch.device, dtype: torch.dtype) -> CSMModel:
    model = model.to(device=device, dtype=dtype).eval()  # rotary tables are complex64 attributes: untouched
    model.requires_grad_(False)
    return model


def _load_dir(path: Path) -> tuple[CSMModel, str]:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"checkpoint directory {path} has no config.json")
    raw = json.loads(cfg_file.read_text())
    if raw.get("model_type") == "csm" or "depth_decoder_config" in raw:
        config = _config_from_transformers(raw)
        state = _transformers_to_original(_read_weights(path), config)
        layout = "transformers"
    else:
        try:
            config = ModelConfig.from_json_dict(raw)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{cfg_file}: {e}") from e
        state = _read_weights(path)
        layout = "original"
    model = CSMModel(config)
    _assign(model, state, path)
    return model.eval(), layout


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").exists():
        return load_file(str(path / "model.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for f in files:
            if not (path / f).exists():
                raise FileNotFoundError(f"shard {path / f} listed in {index.name} is missing")
            state.update(load_file(str(path / f)))
        return state
    if (path / "ckpt.pt").exists():
        state = torch.load(path / "ckpt.pt", map_location="cpu", weights_only=True)
        return state.get("model", state) if isinstance(state, dict) else state
    raise FileNotFoundError(f"checkpoint directory {path} has none of {', '.join(WEIGHT_FILES)}")


def _assign(model: CSMModel, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {len(missing)} tensors, first: {missing[:5]}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"checkpoint {path} has tensors this architecture does not: {unexpected[:5]}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"tensor {k}: expected shape {list(v.shape)} for this config, found {list(state[k].shape)} in {path}"
            )
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()}, strict=True)


def _flavor_from_transformers(c: dict) -> LlamaFlavor:
    rs = c.get("rope_scaling") or {}
    if rs and rs.get("rope_type", rs.get("type")) != "llama3":
        raise CheckpointError(f"unsupported rope_scaling {rs}: CSM uses llama3 scaling")
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    if c.get("head_dim") not in (None, hidden // heads):
        raise CheckpointError(f"head_dim {c['head_dim']} != hidden_size / num_attention_heads")
    kw = dict(
        num_layers=c["num_hidden_layers"], num_heads=heads, num_kv_heads=c["num_key_value_heads"], embed_dim=hidden,
        intermediate_dim=c["intermediate_size"], max_seq_len=c.get("max_position_embeddings", 2048),
        rope_base=float(c.get("rope_theta", 500_000.0)), norm_eps=c.get("rms_norm_eps", 1e-5),
    )
    if rs:
        kw.update(rope_scale_factor=float(rs["factor"]), rope_low_freq_factor=float(rs["low_freq_factor"]),
                  rope_high_freq_factor=float(rs["high_freq_factor"]),
                  rope_original_max_seq_len=int(rs["original_max_position_embeddings"]))
    else:
        kw.update(rope_scale_factor=1.0)  # no scaling: factor 1 leaves every frequency as is
    return LlamaFlavor(**kw)


def _flavor_name(flavor: LlamaFlavor, fallback: str) -> str:
    return next((n for n, f in FLAVORS.items() if f == flavor), fallback)


def _config_from_transformers(raw: dict) -> ModelConfig:
    backbone = _flavor_from_transformers(raw)
    decoder = _flavor_from_transformers(raw["depth_decoder_config"])
    return ModelConfig(
        backbone_flavor=_flavor_name(backbone, "custom-backbone"), decoder_flavor=_flavor_name(decoder, "custom-decoder"),
        text_vocab_size=raw["text_vocab_size"], audio_vocab_size=raw["vocab_size"],
        audio_num_codebooks=raw["num_codebooks"], backbone=backbone, decoder=decoder,
    )


_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn.q_proj.weight", "self_attn.k_proj.weight": "attn.k_proj.weight",
    "self_attn.v_proj.weight": "attn.v_proj.weight", "self_attn.o_proj.weight": "attn.output_proj.weight",
    "mlp.gate_proj.weight": "mlp.w1.weight", "mlp.up_proj.weight": "mlp.w3.weight",
    "mlp.down_proj.weight": "mlp.w2.weight", "input_layernorm.weight": "sa_norm.scale",
    "post_attention_layernorm.weight": "mlp_norm.scale",
}
_TOP_NAMES = {
    "embed_text_tokens.weight": "text_embeddings.weight",
    "backbone_model.embed_tokens.embed_audio_tokens.weight": "audio_embeddings.weight",
    "lm_head.weight": "codebook0_head.weight",
    "depth_decoder.codebooks_head.weight": "audio_head",
    "depth_decoder.model.inputs_embeds_projector.weight": "projection.weight",
    "backbone_model.norm.weight": "backbone.norm.scale",
    "depth_decoder.model.norm.weight": "decoder.norm.scale",
}
# Present in transformers checkpoints, not needed here: the tied copy of the audio embeddings
# and the embedded Mimi (loaded separately through moshi).
_IGNORED_PREFIXES = ("codec_model.", "depth_decoder.model.embed_tokens.")


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotate-half row order (transformers) -> interleaved row order (torchtune). [heads*hd, dim]"""
    out, dim = w.shape
    return w.view(heads, 2, out // heads // 2, dim).transpose(1, 2).reshape(out, dim)


def _transformers_to_original(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    # The audio embeddings are tied to the depth decoder's input table; save_pretrained may
    # keep either copy.
    tied = "depth_decoder.model.embed_tokens.weight"
    if "backbone_model.embed_tokens.embed_audio_tokens.weight" not in state and tied in state:
        out["audio_embeddings.weight"] = state[tied]
    stacks = (("backbone_model.layers.", "backbone.layers.", config.backbone),
              ("depth_decoder.model.layers.", "decoder.layers.", config.decoder))
    for name, t in state.items():
        if name.startswith(_IGNORED_PREFIXES) or name.endswith("rotary_emb.inv_freq"):
            continue
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = t
            continue
        for src, dst, flavor in stacks:
            if name.startswith(src):
                idx, rest = name[len(src):].split(".", 1)
                if rest not in _LAYER_NAMES:
                    raise CheckpointError(f"unknown tensor {name} in transformers checkpoint")
                if rest == "self_attn.q_proj.weight":
                    t = _unpermute(t, flavor.num_heads)
                elif rest == "self_attn.k_proj.weight":
                    t = _unpermute(t, flavor.num_kv_heads)
                out[f"{dst}{idx}.{_LAYER_NAMES[rest]}"] = t
                break
        else:
            raise CheckpointError(f"unknown tensor {name} in transformers checkpoint")
    return out
