// Per-element math of the amax reduction: |x| with NaN canonicalized, and a max that keeps NaN.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/macros.h"

namespace mopt::kernels::reduce {

constexpr uint32_t kCanonicalNaNBits = 0x7fc00000u;

/// |x| as fp32; every NaN becomes the canonical quiet NaN so CPU and CUDA agree bit for bit.
MOPT_HOST_DEVICE float abs_canonical(float x) {
  const uint32_t a = float_to_bits(x) & 0x7fffffffu;
  return bits_to_float(a > 0x7f800000u ? kCanonicalNaNBits : a);
}

/// max(m, v) for non-negative values where NaN wins (so a NaN anywhere reaches the result).
MOPT_HOST_DEVICE float max_keep_nan(float m, float v) {
  return (v > m || v != v) && m == m ? v : m;
}

}  // namespace mopt::kernels::reduce
