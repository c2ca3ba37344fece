// Helpers that turn at::Tensor arguments into kernel parameters (internal to libmopt).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/layout.h"
#include "mopt/core/error.h"

namespace mopt::core {

/// Kernel storage type of a floating tensor; TypeError naming `what` for anything else.
kernels::DType kernel_dtype(const at::Tensor& t, const char* what);

/// Checks that `amax` broadcasts over `x` as a keepdims reduction (right-aligned broadcasting,
/// result shape == x.shape) and returns, per dim of x, whether amax varies along it.
std::vector<bool> amax_keep_mask(const at::Tensor& x, const at::Tensor& amax);

/// Layout of a keepdims reduction of contiguous `x` keeping the dims where keep[d].
kernels::ReduceLayout reduce_layout(const at::Tensor& x, const std::vector<bool>& keep);

/// Normalizes possibly negative axes against ndim; ValueError naming `what` when out of range
/// or repeated.
std::vector<int64_t> normalize_axes(at::IntArrayRef axes, int64_t ndim, const char* what);

/// Keep mask with true at the given (normalized) axes.
std::vector<bool> keep_mask_from_axes(const std::vector<int64_t>& axes, int64_t ndim);

/// "[2, 3, 4]" for messages.
std::string shape_str(at::IntArrayRef shape);

/// Runs a kernel-layer call, turning its precondition failures into ValueError.
template <typename F>
void call_kernel(F&& f) {
  try {
    f();
  } catch (const kernels::KernelError& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

}  // namespace mopt::core
