// Per-element math of histogram collection: the bin that |x| falls into. Shared by the CPU loop
// and the CUDA kernel, so both count every element in the same bin.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/macros.h"

namespace mopt::kernels::histogram {

/// Bin of a = |x| among `bins` equal bins over [0, upper], or -1 when a is not counted (NaN,
/// above upper, or a zero under skip_zeros). The position is floor(a * bins / upper) evaluated in
/// fp32 in exactly this order, which is torch.histc's rule (CPU and CUDA), so a histogram
/// collected here equals histc(|x|, bins, 0, upper) bin for bin; a == upper lands in the last bin.
MOPT_HOST_DEVICE int histogram_bin(float a, float bins_f, int bins, float upper, bool skip_zeros) {
  // Selects instead of branches (and an unconditional division) keep the CPU strip loop
  // vectorizable; `a <= upper` is false for NaN, so only counted values become integers.
  const bool counted = (a <= upper) & !(skip_zeros & (a == 0.0f));
  const float q = a * bins_f / upper;
  const int pos = static_cast<int>(counted ? q : 0.0f);
  return counted ? (pos < bins ? pos : bins - 1) : -1;
}

/// |x| of a stored element as fp32.
template <typename T>
MOPT_HOST_DEVICE float load_abs(const T* p) {
  return bits_to_float(float_to_bits(load_float(p)) & 0x7fffffffu);
}

}  // namespace mopt::kernels::histogram
