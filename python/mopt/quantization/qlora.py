"""QLoRA on packed weights: LoRA adapters (``peft``) trained over a base that ``mtq.compress``
keeps packed (NF4 with double quantization, INT4, FP8, ...).

* ``packed_linear(x, module, bias)``: the Linear op of a compressed module. The weight is
  dequantized by the C++ kernel for the product and dropped; backward dequantizes it again for
  the input gradient. Autograd therefore keeps no full-precision copy of a frozen base weight
  between forward and backward, which is where QLoRA saves its memory (bitsandbytes' 4-bit
  matmul does the same).
* ``merge_adapters(peft_model)``: folds each LoRA adapter into its base and returns the plain
  model: a packed base becomes an ``nn.Linear`` holding dequantized base + ``scaling * B @ A``
  (quantize it again to deploy packed), a float base is merged by peft itself.

Typical use (docs/training.md, "QLoRA"):

    mtq.quantize(model, mtq.NF4_WEIGHT_ONLY_CFG, None)   # weights only: no calibration data
    mtq.compress(model)                                  # base packed and frozen
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=[...]))
    ... train ...
    merged = merge_adapters(model)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["packed_linear", "merge_adapters"]


class _PackedLinear(torch.autograd.Function):
    """y = x W^T + b with W dequantized from the module's packed weight; the packed weight is
    frozen (no gradient), so backward needs W only for the input gradient and rebuilds it."""

    @staticmethod
    def forward(ctx, x, module, bias):  # noqa: D401 - autograd's signature
        weight = module.packed_weight.dequantize(x.dtype)
        ctx.module = module
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = ctx.module.packed_weight.dequantize(grad_out.dtype)
            grad_x = grad_out.matmul(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, grad_bias


def packed_linear(x: torch.Tensor, module: nn.Module, bias: torch.Tensor | None) -> torch.Tensor:
    """The Linear op of a compressed module (see the module docstring). Without autograd it is
    F.linear on the dequantized weight; the result is the same either way."""
    if not torch.is_grad_enabled() or not (x.requires_grad or (bias is not None
                                                               and bias.requires_grad)):
        return F.linear(x, module.packed_weight.dequantize(x.dtype), bias)
    return _PackedLinear.apply(x, module, bias)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Folds every LoRA adapter of a ``peft`` model into its base layer and returns the model
    without peft's wrappers. A base compressed by ``mtq.compress`` becomes a float ``nn.Linear``
    (weight = dequantized base + scaling * B @ A, in the adapter's dtype; its quantizers are
    dropped: quantize and compress the merged model again to deploy it packed). Refuses
    adapters other than LoRA on compressed layers (ValueError naming the layer); the model is
    then unchanged."""
    from .compress import is_compressed

    try:
        from peft.tuners.lora import LoraLayer
    except ImportError as e:  # pragma: no cover - peft is a declared requirement
        raise ImportError("merge_adapters needs the 'peft' package") from e
    lora_layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not lora_layers:
        raise ValueError("merge_adapters: the model has no LoRA layers (wrap it with "
                         "peft.get_peft_model first)")
    plans = []
    for name, layer in lora_layers:
        base = layer.get_base_layer()
        if not is_compressed(base):
            continue
        if not isinstance(base, nn.Linear):
            raise ValueError(f"merge_adapters: {name} is a compressed {type(base).__name__}; "
                             "only Linear bases are merged")
        with torch.no_grad():
            weight = base.packed_weight.dequantize(torch.float32)
            for adapter in layer.active_adapters:
                if adapter not in layer.lora_A:
                    continue
                delta = layer.get_delta_weight(adapter).float()
                weight = weight + delta
        plans.append((name, layer, base, weight))
    for _name, layer, base, weight in plans:
        dtype = next((p.dtype for p in layer.parameters() if p.is_floating_point()),
                     torch.float32)
        plain = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          device=weight.device, dtype=dtype)
        with torch.no_grad():
            plain.weight.copy_(weight.to(dtype))
            if base.bias is not None:
                plain.bias.copy_(base.bias.detach().to(dtype))
        layer.base_layer = plain  # peft then merges an ordinary Linear: nothing left to add
        for adapter in list(layer.lora_A):
            layer.lora_A[adapter].weight.data.zero_()
            layer.lora_B[adapter].weight.data.zero_()
    return model.merge_and_unload()
