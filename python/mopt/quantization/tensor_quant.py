"""Functional fake quantization with the reference's signatures (mtq.tensor_quant)."""

from __future__ import annotations

import torch

__all__ = [
    "fake_tensor_quant",
    "scaled_e4m3",
    "fake_quant_fp",
    "compute_amax",
    "fake_quant_nvfp4",
    "fake_quant_mx",
    "fake_quant_nf4",
    "dynamic_block_quant",
]


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


def fake_quant_nvfp4(inputs: torch.Tensor, global_amax: torch.Tensor | None = None,
                     block_size: int = 16, block_amax: torch.Tensor | None = None,
                     pass_through_bwd: bool = False) -> torch.Tensor:
    """NVFP4 fake quantization in blocks along the last dim: E2M1 values, E4M3 block scales and
    the fp32 tensor scale global_amax / (6 * 448) (global_amax defaults to the input's amax)."""
    return torch.ops.mopt.fake_quant_nvfp4(inputs, global_amax, block_size, block_amax,
                                           pass_through_bwd)


def fake_quant_mx(inputs: torch.Tensor, exponent_bits: int, mantissa_bits: int,
                  block_size: int = 32, block_amax: torch.Tensor | None = None,
                  pass_through_bwd: bool = False) -> torch.Tensor:
    """OCP MX fake quantization in blocks along the last dim (E8M0 scales); the element format
    is a minifloat (E, M), or (0, 7) for MXINT8."""
    return torch.ops.mopt.fake_quant_mx(inputs, exponent_bits, mantissa_bits, block_size,
                                        block_amax, pass_through_bwd)


def fake_quant_nf4(inputs: torch.Tensor, block_size: int = 64, scale_block_size: int = 0,
                   block_amax: torch.Tensor | None = None,
                   pass_through_bwd: bool = False) -> torch.Tensor:
    """NF4 fake quantization in blocks along the last dim; scale_block_size > 0 double-quantizes
    the block scales to int8 in groups of that many (-1: one group, 0: fp32 scales)."""
    return torch.ops.mopt.fake_quant_nf4(inputs, block_size, scale_block_size, block_amax,
                                         pass_through_bwd)


def dynamic_block_quant(inputs: torch.Tensor, block_size: int, amax: torch.Tensor | None,
                        bias: torch.Tensor | None, num_bits: int | tuple[int, int],
                        scale_bits: tuple[int, int], trt_high_precision_dtype: str | None = None,
                        onnx_quantizer_type: str = "dynamic",
                        pass_through_bwd: bool = True) -> torch.Tensor:
    """Dynamic block quantization along the last dim with the reference's signature: NVFP4 for
    num_bits (2, 1) with scale_bits (4, 3) (amax = the tensor amax, None for the input's own),
    MX for scale_bits (8, 0) (amax unused; num_bits 8 is MXINT8)."""
    num_bits = tuple(num_bits) if isinstance(num_bits, (list, tuple)) else num_bits
    scale_bits = tuple(scale_bits) if isinstance(scale_bits, (list, tuple)) else scale_bits
    if bias is not None:
        inputs = inputs - bias
    if num_bits == (2, 1) and scale_bits == (4, 3):
        out = fake_quant_nvfp4(inputs, None if amax is None else torch.as_tensor(amax),
                               block_size, None, pass_through_bwd)
    elif scale_bits == (8, 0):
        e, m = (0, num_bits - 1) if isinstance(num_bits, int) else num_bits
        out = fake_quant_mx(inputs, e, m, block_size, None, pass_through_bwd)
    else:
        raise NotImplementedError(
            f"dynamic block quantization with num_bits={num_bits} and scale_bits={scale_bits} is "
            "not implemented; use NVFP4 (num_bits (2, 1), scale_bits (4, 3)) or MX "
            "(scale_bits (8, 0))"
        )
    return out if bias is None else out + bias
