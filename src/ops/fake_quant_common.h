// Argument checking and kernel-parameter preparation shared by the CPU and CUDA op
// implementations of the fake_quant family (internal).
#pragma once

#include <ATen/core/Tensor.h>

#include "fake_quant/fake_quant.h"
#include "amax/amax.h"

namespace mopt::ops {

/// Tensors kept alive for one fake-quant kernel call, with its parameters.
struct FakeQuantCall {
  at::Tensor x;     // contiguous input
  at::Tensor amax;  // contiguous fp32, or undefined
  at::Tensor zero_point;  // contiguous fp32 in amax's shape (asymmetric), or undefined
  at::Tensor y;     // output, same shape and dtype as x
  kernels::fake_quant::FakeQuantParams params;
};

/// Validates and prepares an integer fake-quant call; a defined zero_point (amax's shape) makes
/// it asymmetric (full-range scaling, signed).
FakeQuantCall prepare_fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int64_t num_bits,
                                     bool is_unsigned, bool narrow_range, bool full_range,
                                     const at::Tensor& zero_point = at::Tensor());

/// Tensors kept alive for one int_asym_range kernel call.
struct AsymRangeCall {
  at::Tensor lo, hi, amax, zero_point;
  kernels::fake_quant::AsymRangeParams params;
};

/// Validates and prepares an int_asym_range call (lo and hi: same shape and device).
AsymRangeCall prepare_int_asym_range(const at::Tensor& lo, const at::Tensor& hi,
                                     int64_t num_bits);

/// Validates and prepares a minifloat fake-quant call.
FakeQuantCall prepare_fake_quant_fp(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                                    int64_t exponent_bits, int64_t mantissa_bits);

/// Tensors kept alive for one amax kernel call.
struct AmaxCall {
  at::Tensor x;
  at::Tensor out;
  kernels::reduce::AmaxParams params;
};

/// Validates and prepares an amax reduction keeping `keep_axes`.
AmaxCall prepare_amax(const at::Tensor& x, at::IntArrayRef keep_axes);

/// Shape of the keepdims result of reducing x over all dims but keep_axes.
std::vector<int64_t> amax_shape(const at::Tensor& x, at::IntArrayRef keep_axes);

/// Error for an unsigned quantizer that met negative inputs.
[[noreturn]] void throw_negative_unsigned();

}  // namespace mopt::ops
