// CUDA implementation of mopt::histogram_abs (compiled only when torch has CUDA). The kernel runs
// on the caller's current stream without synchronizing.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "core/tensor_utils.h"
#include "ops/histogram_common.h"

namespace mopt::ops {
namespace {

at::Tensor histogram_abs_cuda(const at::Tensor& x, at::IntArrayRef keep_axes,
                              const at::Tensor& upper, const at::Tensor& bins, int64_t max_bins,
                              bool skip_zeros) {
  const c10::cuda::CUDAGuard guard(x.device());
  HistogramCall c = prepare_histogram(x, keep_axes, upper, bins, max_bins, skip_zeros);
  core::call_kernel([&] {
    kernels::histogram::histogram_cuda(c.params, at::cuda::getCurrentCUDAStream());
  });
  return c.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt, CUDA, m) { m.impl("histogram_abs", &histogram_abs_cuda); }

}  // namespace mopt::ops
