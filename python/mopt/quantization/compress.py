"""Packed weights: a quantized weight held as its format's codes and scales
(``pack_weight``), computed and dequantized by the C++ kernels in kernels/pack. The layout of
every format is documented in include/mopt/quant/pack.h and docs/export.md."""

from __future__ import annotations

import torch

from .. import _C
from .nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

PackedWeight = _C.PackedWeight

__all__ = ["PackedWeight", "pack_weight"]


def pack_weight(weight: torch.Tensor, weight_quantizer: TensorQuantizer) -> PackedWeight:
    """Packs `weight` as `weight_quantizer` fake-quantizes it: ``pack_weight(w, q).dequantize()``
    equals ``q(w)`` bit for bit. The quantizer must be enabled, quantizing and (if static)
    calibrated; its pre_quant_scale and zero point are applied as its forward applies them."""
    if isinstance(weight_quantizer, SequentialQuantizer):
        raise NotImplementedError(
            f"mopt: weight quantizer '{_name(weight_quantizer)}' is a SequentialQuantizer (several "
            "stages, e.g. W4A8's int4 then fp8): packed weights hold one format; there is no "
            "packed layout for stacked stages")
    if not isinstance(weight_quantizer, TensorQuantizer):
        raise TypeError(f"mopt: pack_weight takes a TensorQuantizer, got "
                        f"{type(weight_quantizer).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"mopt: pack_weight takes a weight tensor, got {type(weight).__name__}")
    q = weight_quantizer
    if q._lsq is not None and not q._lsq[2]:
        raise NotImplementedError(
            f"mopt: quantizer '{q.name}' learns separate quantization and dequantization amaxes "
            "(LSQ amax_pre / amax_post): layout not supported by packed weights, which keep one "
            "scale per block; tie them (enable_lsq(..., tied_amax=True)) or recalibrate")
    return _C.pack_weight(weight.detach(), q.core, q._amax_tensor(),
                          q._buffers.get("_pre_quant_scale"), q._buffers.get("_zero_point"))


def _name(q) -> str:
    return getattr(q, "name", None) or type(q).__name__
