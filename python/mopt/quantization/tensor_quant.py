"""Functional fake quantization with the reference's signatures (mtq.tensor_quant)."""

from __future__ import annotations

import torch

__all__ = ["fake_tensor_quant", "scaled_e4m3", "fake_quant_fp", "compute_amax"]


def fake_tensor_quant(inputs: torch.Tensor, amax: torch.Tensor, bias: torch.Tensor | None = None,
                      num_bits: int = 8, unsigned: bool = False, narrow_range: bool = True,
                      trt_high_precision_dtype: str | None = None, pass_through_bwd: bool = False,
                      block_size: int | None = None, axis: int | None = None) -> torch.Tensor:
    """Integer fake quantization; amax broadcasts over inputs (keepdims). `bias` shifts the
    input before and the output after quantizing; block_size/axis describe the layout for ONNX
    export only and do not change the result."""
    if bias is not None:
        inputs = inputs - bias
    out = torch.ops.mopt.fake_quant_int(inputs, torch.as_tensor(amax), num_bits, unsigned,
                                        narrow_range, pass_through_bwd)
    return out if bias is None else out + bias


def scaled_e4m3(inputs: torch.Tensor, amax: torch.Tensor | None, bias: torch.Tensor | None = None,
                E: int = 4, M: int = 3, trt_high_precision_dtype: str | None = None,
                pass_through_bwd: bool = False) -> torch.Tensor:
    """FP8 (E4M3 by default) fake quantization scaled so that amax maps to the format maximum;
    amax=None casts without scaling."""
    if bias is not None:
        inputs = inputs - bias
    out = torch.ops.mopt.fake_quant_fp(inputs, None if amax is None else torch.as_tensor(amax), E,
                                       M, pass_through_bwd)
    return out if bias is None else out + bias


def fake_quant_fp(inputs: torch.Tensor, amax: torch.Tensor | None, exponent_bits: int,
                  mantissa_bits: int, pass_through_bwd: bool = False) -> torch.Tensor:
    """Any supported minifloat (FP8/FP6/FP4) fake quantization."""
    return torch.ops.mopt.fake_quant_fp(inputs, amax, exponent_bits, mantissa_bits,
                                        pass_through_bwd)


def compute_amax(inputs: torch.Tensor, keep_axes: tuple[int, ...] = ()) -> torch.Tensor:
    """max |x| over every dim but keep_axes (keepdims, fp32), in one pass."""
    return torch.ops.mopt.amax(inputs, list(keep_axes))
