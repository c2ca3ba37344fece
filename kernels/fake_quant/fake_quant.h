// Integer and minifloat fake quantization with an amax that broadcasts over the input
// (per tensor, per channel on any kept axes, per static block after a block reshape).
#pragma once

#include <cstdint>

#include "common/cuda_stream.h"
#include "common/dtype.h"
#include "common/format.h"
#include "common/layout.h"

namespace mopt::kernels::fake_quant {

/// Arguments of fake_quant_cpu / fake_quant_cuda. x and y are contiguous, numel elements of
/// `dtype`, and may alias. amax is fp32 with layout.out_numel elements broadcasting over x as
/// `layout` describes; amax == nullptr means unscaled (minifloat only).
struct FakeQuantParams {
  const void* x = nullptr;
  void* y = nullptr;
  DType dtype = DType::kFloat32;
  const float* amax = nullptr;
  ReduceLayout layout;
  Format format = Format::kInt;
  int num_bits = 8;           // integer formats: 2..16
  bool is_unsigned = false;   // integer formats
  bool narrow_range = false;  // integer formats
  bool full_range = false;    // integer formats: amax maps to maxbound + 1/2 (signed, not narrow)
  /// Optional, integer formats: zero-point codes in amax's layout (asymmetric; with full_range
  /// scaling, see int_asym_range). nullptr: symmetric.
  const float* zero_point = nullptr;
  int exponent_bits = 4;      // minifloat formats: 1..5
  int mantissa_bits = 3;      // minifloat formats: 0..10
  /// Optional. Set to 1 when an unsigned integer format meets a negative input.
  int32_t* negative_found = nullptr;
};

/// Arguments of int_asym_range_cpu / _cuda: n (lo, hi) pairs to (amax, zero point) pairs.
struct AsymRangeParams {
  const float* lo = nullptr;
  const float* hi = nullptr;
  float* amax = nullptr;
  float* zero_point = nullptr;
  int64_t n = 0;
  int num_bits = 8;
};

/// int_asym_range over arrays (CPU).
void int_asym_range_cpu(const AsymRangeParams& p);

/// int_asym_range over device arrays on `stream`.
void int_asym_range_cuda(const AsymRangeParams& p, cudaStream_t stream);

/// Validates the format fields of p (bit widths in range); throws KernelError otherwise.
void fake_quant_check(const FakeQuantParams& p);

/// CPU implementation (vectorized inner loop, parallel over chunks).
void fake_quant_cpu(const FakeQuantParams& p);

/// CUDA implementation on `stream`; pointers are device pointers (negative_found too).
void fake_quant_cuda(const FakeQuantParams& p, cudaStream_t stream);

}  // namespace mopt::kernels::fake_quant
