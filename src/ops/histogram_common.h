// Argument checking and kernel-parameter preparation shared by the CPU and CUDA implementations
// of mopt::histogram_abs (internal).
#pragma once

#include <ATen/core/Tensor.h>

#include "histogram/histogram.h"

namespace mopt::ops {

/// Tensors kept alive for one histogram kernel call, with its parameters.
struct HistogramCall {
  at::Tensor x;      // [channels, length] view (or copy) of the input
  at::Tensor upper;  // fp32 [channels]
  at::Tensor bins;   // int64 [channels]
  at::Tensor out;    // int64 [channels, max_bins]
  kernels::histogram::HistogramParams params;
};

/// Validates and prepares a histogram_abs call.
HistogramCall prepare_histogram(const at::Tensor& x, at::IntArrayRef keep_axes,
                                const at::Tensor& upper, const at::Tensor& bins, int64_t max_bins,
                                bool skip_zeros);

}  // namespace mopt::ops
