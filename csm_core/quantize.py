"""Weight quantization of the two transformer stacks (backbone and depth decoder) with torchao.

    quantize_model(model, "none" | "int8-weight" | "float8")

- int8-weight: torchao's Int8WeightOnlyConfig: symmetric int8 weights with one scale per output
  channel. Its linear is torch's own `mm` on the weight cast to the activation dtype, times the
  scales (torchao's AffineQuantizedTensor dispatch).
- float8: torchao's Float8DynamicActivationFloat8WeightConfig with per-row scales for weights and
  activations (each activation row quantized on the fly) and kernel preference TORCH:
  `torch._scaled_mm`. CUDA devices of compute capability >= 8.9 only (Ada, Hopper and newer), with
  bfloat16 weights.

torchao 0.14.1 skips its C++ extensions on torch 2.9.1 (and the GPU image's 2.11), so only configs
whose kernels are torch's own are offered; tests/test_quantize.py checks that a quantized forward
dispatches nothing but aten operators. The quantized weights are the ones the forward reads: the
fused q/k/v and gate/up matrices (csm_core/llama.py), the attention output and the MLP down
projection of every layer. Embeddings, the backbone-to-decoder projection and the codebook heads
stay in the model dtype (together ~15 % of the weights read per frame on csm-1b).
"""

from __future__ import annotations

import torch
from torch import nn
from torchao.quantization import (
    Float8DynamicActivationFloat8WeightConfig,
    Int8WeightOnlyConfig,
    PerRow,
    quantize_,
)
from torchao.quantization.quantize_.common import KernelPreference

from csm_core.constants import QUANTIZE_MODES
from csm_core.llama import Transformer
from csm_core.model import CSMModel

FLOAT8_MIN_CAPABILITY = (8, 9)


def check_quantize(mode: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raises ValueError, naming what to change, when `mode` cannot run on this device and dtype."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    if mode != "float8":
        return
    if device.type != "cuda":
        raise ValueError(f"--quantize float8 needs a CUDA device of compute capability >= 8.9 "
                         f"(Ada, Hopper or newer); the model is on {device.type}")
    capability = torch.cuda.get_device_capability(device)
    if capability < FLOAT8_MIN_CAPABILITY:
        raise ValueError(f"--quantize float8 needs CUDA compute capability >= 8.9 (Ada, Hopper or newer); "
                         f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}: "
                         f"use --quantize int8-weight or none")
    if dtype != torch.bfloat16:
        raise ValueError(f"--quantize float8 quantizes bfloat16 weights: use --dtype bfloat16 (not {dtype})")


def quantize_model(model: CSMModel, mode: str) -> None:
    """Quantize the backbone's and depth decoder's linear weights in place (see the module docstring).
    The separate q/k/v and gate/up projections are dropped: the fused weights are then the only copy."""
    p = model.backbone.norm.scale
    check_quantize(mode, p.device, p.dtype)
    if mode == "none":
        return
    if mode == "int8-weight":
        # set_inductor_config would change global torch settings (fp32 matmul precision among them)
        config = Int8WeightOnlyConfig(set_inductor_config=False)
    else:
        config = Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), kernel_preference=KernelPreference.TORCH, set_inductor_config=False)
    for stack in (model.backbone, model.decoder):
        _quantize_stack(stack, config)


def _quantize_stack(stack: Transformer, config) -> None:
    for layer in stack.layers:
        attn, mlp = layer.attn, layer.mlp
        attn.wqkv = _quantized(attn.fused_weight(), config)
        mlp.w13 = _quantized(mlp.fused_weight(), config)
        attn.q_proj = attn.k_proj = attn.v_proj = None
        mlp.w1 = mlp.w3 = None
        quantize_(attn.output_proj, config)
        quantize_(mlp.w2, config)


def _quantized(weight: torch.Tensor, config) -> torch.Tensor:
    """A quantized copy of a plain weight [out, in], through torchao's module API."""
    holder = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    holder.weight = nn.Parameter(weight, requires_grad=False)
    quantize_(holder, config)
    return holder.weight.detach()
