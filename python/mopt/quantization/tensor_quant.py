"""Functional fake quantization with the reference's signatures (mtq.tensor_quant)."""

from __future__ import annotations

import torch

from .._compat import define_refusals
from .config import QuantizerAttributeConfig

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


def _fake_tensor_quant(inputs: torch.Tensor, amax: torch.Tensor, bias: torch.Tensor | None = None,
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


def _scaled_e4m3(inputs: torch.Tensor, amax: torch.Tensor | None, bias: torch.Tensor | None = None,
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


def _dynamic_block_quant(inputs: torch.Tensor, block_size: int, amax: torch.Tensor | None,
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


# -- ModelOpt's module-level names ---------------------------------------------------------------

# Attribute descriptors (QuantizerAttributeConfig instances) with ModelOpt's values.
QUANT_DESC_8BIT_PER_TENSOR = QuantizerAttributeConfig(num_bits=8)
QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR = QuantizerAttributeConfig(num_bits=8, unsigned=True)
QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL = QuantizerAttributeConfig(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL = QuantizerAttributeConfig(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL = QuantizerAttributeConfig(num_bits=8, axis=0)
QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW = QuantizerAttributeConfig(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL = QuantizerAttributeConfig(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL = QuantizerAttributeConfig(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL = QuantizerAttributeConfig(num_bits=8, axis=0)

E4M3_MAX = 448.0
DISABLE_TRITON_KERNEL = False  # mopt has no Triton kernels; kept so scripts that set it run

# num_bits -> the name of the element (or scale) format, as ModelOpt's MX helpers name them.
mx_format_map = {
    (4, 3): "E4M3", (5, 2): "E5M2", (3, 2): "E3M2", (2, 3): "E2M3", 8: "INT8", (8, 0): "E8M0",
    (2, 1): "E2M1", (1, 2): "E1M2", (0, 3): "E0M3", (3, 0): "E3M0",
}


def _through_op(ctx, inputs: torch.Tensor, compute) -> torch.Tensor:
    """Runs `compute(inputs)` (one mopt op) inside an autograd Function. When a gradient is
    needed the op runs on a detached copy with autograd on, so backward is the op's own C++
    backward (clipped straight-through estimator) rather than a second one written here."""
    if not ctx.needs_input_grad[0]:
        return compute(inputs)
    with torch.enable_grad():
        x = inputs.detach().requires_grad_()
        out = compute(x)
    ctx.mopt_graph = (x, out)
    return out.detach()


def _backward_through_op(ctx, grad_outputs: torch.Tensor, num_args: int):
    x, out = ctx.mopt_graph
    (grad_inputs,) = torch.autograd.grad(out, x, grad_outputs)
    del ctx.mopt_graph
    return (grad_inputs,) + (None,) * (num_args - 1)


class FakeTensorQuantFunction(torch.autograd.Function):
    """Integer fake quantization as an autograd Function (``fake_tensor_quant`` is its apply)."""

    @staticmethod
    def forward(ctx, inputs, amax, bias=None, num_bits=8, unsigned=False, narrow_range=True,
                trt_high_precision_dtype=None, pass_through_bwd=False, block_size=None,
                axis=None):
        amax = None if amax is None else torch.as_tensor(amax).detach()
        return _through_op(ctx, inputs, lambda x: _fake_tensor_quant(
            x, amax, bias, num_bits, unsigned, narrow_range, trt_high_precision_dtype,
            pass_through_bwd, block_size, axis))

    @staticmethod
    def backward(ctx, grad_outputs):
        return _backward_through_op(ctx, grad_outputs, 10)


class ScaledE4M3Function(torch.autograd.Function):
    """FP8 fake quantization as an autograd Function (``scaled_e4m3`` is its apply)."""

    @staticmethod
    def forward(ctx, inputs, amax, bias=None, E=4, M=3,  # noqa: N803
                trt_high_precision_dtype=None, pass_through_bwd=False):
        amax = None if amax is None else torch.as_tensor(amax).detach()
        return _through_op(ctx, inputs, lambda x: _scaled_e4m3(
            x, amax, bias, E, M, trt_high_precision_dtype, pass_through_bwd))

    @staticmethod
    def backward(ctx, grad_outputs):
        return _backward_through_op(ctx, grad_outputs, 7)


class DynamicBlockQuantizationFunction(torch.autograd.Function):
    """Dynamic block (NVFP4 / MX) fake quantization as an autograd Function."""

    @staticmethod
    def forward(ctx, inputs, block_size, amax, bias, num_bits, scale_bits,
                trt_high_precision_dtype=None, onnx_quantizer_type="dynamic",
                pass_through_bwd=True):
        amax = None if amax is None else torch.as_tensor(amax).detach()
        return _through_op(ctx, inputs, lambda x: _dynamic_block_quant(
            x, block_size, amax, bias, num_bits, scale_bits, trt_high_precision_dtype,
            onnx_quantizer_type, pass_through_bwd))

    @staticmethod
    def backward(ctx, grad_outputs):
        return _backward_through_op(ctx, grad_outputs, 9)


def _int_bounds_amax(num_bits: int, unsigned: bool) -> torch.Tensor:
    # amax = maxbound makes the op's scale exactly 1: a plain clamp-round to the integer range.
    return torch.tensor(2.0 ** (num_bits - 1 + int(unsigned)) - 1.0)


class IntCastSTEFunction(torch.autograd.Function):
    """Clamp-round to the integer range of num_bits, unscaled (``int_cast_ste`` is its apply)."""

    @staticmethod
    def forward(ctx, x, num_bits, unsigned=False, narrow_range=True):
        amax = _int_bounds_amax(num_bits, unsigned).to(x.device)
        return _through_op(ctx, x, lambda t: torch.ops.mopt.fake_quant_int(
            t, amax, num_bits, unsigned, narrow_range, False))

    @staticmethod
    def backward(ctx, grad_outputs):
        return _backward_through_op(ctx, grad_outputs, 4)


class FP4CastSTEFunction(torch.autograd.Function):
    """Unscaled cast to FP4 E2M1 values (``fp4_cast_ste`` is its apply)."""

    @staticmethod
    def forward(ctx, x, out_dtype=None):
        out = _through_op(ctx, x, lambda t: torch.ops.mopt.fake_quant_fp(t, None, 2, 1, False))
        return out if out_dtype is None else out.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_outputs):
        return _backward_through_op(ctx, grad_outputs, 2)


# As in ModelOpt these are Function.apply objects, not plain functions: stored as a class
# attribute they do not bind `self`.
fake_tensor_quant = FakeTensorQuantFunction.apply
scaled_e4m3 = ScaledE4M3Function.apply
dynamic_block_quant = DynamicBlockQuantizationFunction.apply
int_cast_ste = IntCastSTEFunction.apply
fp4_cast_ste = FP4CastSTEFunction.apply


def fake_quant_impl(inputs: torch.Tensor, amax: torch.Tensor, num_bits: int = 8,
                    unsigned: bool = False, narrow_range: bool = True) -> torch.Tensor:
    """Integer fake quantization without a custom gradient (ModelOpt's eager implementation)."""
    return torch.ops.mopt.fake_quant_int(inputs, torch.as_tensor(amax), num_bits, unsigned,
                                         narrow_range, False)


def scaled_e4m3_impl(inputs: torch.Tensor, amax: torch.Tensor | None = None) -> torch.Tensor:
    """E4M3 fake quantization (amax None: unscaled cast)."""
    return torch.ops.mopt.fake_quant_fp(inputs, None if amax is None else torch.as_tensor(amax),
                                        4, 3, False)


def fp8_eager(x: torch.Tensor, amax: torch.Tensor | None) -> torch.Tensor:
    """E4M3 fake quantization (the op runs on every device; there is no separate eager path)."""
    return scaled_e4m3_impl(x, amax)


_TQ = "modelopt.torch.quantization.tensor_quant"
_NO_EXT = ("mopt's kernels are compiled into its extension (mopt._C, torch.ops.mopt.*); there is "
           "no separately built CUDA extension to load")
__all__ += [
    "QuantizerAttributeConfig", "E4M3_MAX", "DISABLE_TRITON_KERNEL", "mx_format_map",
    "FakeTensorQuantFunction", "ScaledE4M3Function", "DynamicBlockQuantizationFunction",
    "IntCastSTEFunction", "FP4CastSTEFunction", "int_cast_ste", "fp4_cast_ste",
    "fake_quant_impl", "scaled_e4m3_impl", "fp8_eager",
    *[n for n in globals() if n.startswith("QUANT_DESC_")],
]
__all__ += define_refusals(globals(), _TQ, {
    "get_cuda_ext": ("function", _NO_EXT),
    "get_cuda_ext_fp8": ("function", _NO_EXT),
    "get_cuda_ext_mx": ("function", _NO_EXT),
    "quantize_op": ("object", "ModelOpt's torch.library op handle; mopt's operator is "
                    "torch.ops.mopt.quantize_tensor with a different schema (a quantizer config)"),
    "dynamic_block_quantize_op": ("object", "ModelOpt's torch.library op handle; use "
                                  "torch.ops.mopt.fake_quant_nvfp4 / fake_quant_mx"),
    "StaticBlockwiseFP4FakeQuantFunction": (
        "class", "static FP4 with caller-given per-block amax and the quantize_block_scales / "
        "fp8_max_for_normalization options; use a TensorQuantizer with NVFP4 static "
        "block_sizes"),
    "static_blockwise_fp4_fake_quant": (
        "function", "static FP4 with caller-given per-block amax and the quantize_block_scales "
        "/ fp8_max_for_normalization options; use a TensorQuantizer with NVFP4 static "
        "block_sizes"),
})
