// torch.ops.mopt.histogram_abs: schema, CPU, Meta and Autograd implementations, and the C++ entry
// point that calls through the dispatcher.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "core/tensor_utils.h"
#include "mopt/calib/histogram_calibrator.h"
#include "ops/histogram_common.h"

namespace mopt {
namespace ops {

HistogramCall prepare_histogram(const at::Tensor& x, at::IntArrayRef keep_axes,
                                const at::Tensor& upper, const at::Tensor& bins, int64_t max_bins,
                                bool skip_zeros) {
  HistogramCall c;
  auto& p = c.params;
  p.dtype = core::kernel_dtype(x, "histogram input");
  MOPT_CHECK_VALUE(max_bins >= 1 && max_bins <= kernels::histogram::kMaxHistogramBins,
                   "histogram max_bins must be in [1, ", kernels::histogram::kMaxHistogramBins,
                   "], got ", max_bins);
  std::vector<int64_t> axes = core::normalize_axes(keep_axes, x.dim(), "histogram keep axis");
  std::sort(axes.begin(), axes.end());
  const auto keep = core::keep_mask_from_axes(axes, x.dim());
  int64_t channels = 1, length = 1;
  std::vector<int64_t> perm = axes;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (keep[d]) {
      channels *= x.size(d);
    } else {
      length *= x.size(d);
      perm.push_back(d);
    }
  }
  // Channels first, then the reduced axes merged: a view whenever the strides allow it (a
  // channel-last activation stays in place), otherwise one copy.
  c.x = x.dim() == 0 ? x.reshape({1, 1}) : x.permute(perm).reshape({channels, length});
  for (const auto& [t, what] : {std::pair{&upper, "upper"}, std::pair{&bins, "bins"}}) {
    MOPT_CHECK_VALUE(t->device() == x.device(), "histogram ", what, " is on ", t->device(),
                     " but the input is on ", x.device());
    MOPT_CHECK_VALUE(t->numel() == channels, "histogram ", what, " has ", t->numel(),
                     " elements but the input has ", channels, " channels (keep axes ",
                     core::shape_str(axes), " of shape ", core::shape_str(x.sizes()), ")");
  }
  MOPT_CHECK_TYPE(at::isFloatingType(upper.scalar_type()),
                  "histogram upper must be a floating tensor, got ", upper.scalar_type());
  MOPT_CHECK_TYPE(at::isIntegralType(bins.scalar_type(), /*includeBool=*/false),
                  "histogram bins must be an integer tensor, got ", bins.scalar_type());
  c.upper = upper.to(at::kFloat).contiguous();
  c.bins = bins.to(at::kLong).contiguous();
  c.out = at::empty({channels, max_bins}, x.options().dtype(at::kLong));
  p.x = c.x.const_data_ptr();
  p.channels = channels;
  p.length = length;
  p.channel_stride = c.x.stride(0);
  p.element_stride = c.x.stride(1);
  p.upper = c.upper.const_data_ptr<float>();
  p.bins = c.bins.const_data_ptr<int64_t>();
  p.max_bins = max_bins;
  p.skip_zeros = skip_zeros;
  p.hist = c.out.mutable_data_ptr<int64_t>();
  return c;
}

namespace {

at::Tensor histogram_abs_cpu(const at::Tensor& x, at::IntArrayRef keep_axes,
                             const at::Tensor& upper, const at::Tensor& bins, int64_t max_bins,
                             bool skip_zeros) {
  HistogramCall c = prepare_histogram(x, keep_axes, upper, bins, max_bins, skip_zeros);
  core::call_kernel([&] { kernels::histogram::histogram_cpu(c.params); });
  return c.out;
}

at::Tensor histogram_abs_meta(const at::Tensor& x, at::IntArrayRef keep_axes,
                              const at::Tensor& upper, const at::Tensor& bins, int64_t max_bins,
                              bool skip_zeros) {
  core::kernel_dtype(x, "histogram input");
  const auto axes = core::normalize_axes(keep_axes, x.dim(), "histogram keep axis");
  c10::SymInt channels = 1;
  for (int64_t a : axes) channels = channels * x.sym_size(a);
  return at::empty_symint({channels, c10::SymInt(max_bins)}, x.options().dtype(at::kLong));
}

// Counts are statistics, never part of a gradient.
at::Tensor histogram_abs_autograd(const at::Tensor& x, at::IntArrayRef keep_axes,
                                  const at::Tensor& upper, const at::Tensor& bins,
                                  int64_t max_bins, bool skip_zeros) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return histogram_abs(x, keep_axes, upper, bins, max_bins, skip_zeros);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mopt, m) {
  m.def(
      "histogram_abs(Tensor x, int[] keep_axes, Tensor upper, Tensor bins, int max_bins, "
      "bool skip_zeros=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(mopt, CPU, m) { m.impl("histogram_abs", &histogram_abs_cpu); }

TORCH_LIBRARY_IMPL(mopt, Meta, m) { m.impl("histogram_abs", &histogram_abs_meta); }

TORCH_LIBRARY_IMPL(mopt, Autograd, m) { m.impl("histogram_abs", &histogram_abs_autograd); }

}  // namespace ops

at::Tensor histogram_abs(const at::Tensor& x, at::IntArrayRef keep_axes, const at::Tensor& upper,
                         const at::Tensor& bins, int64_t max_bins, bool skip_zeros) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::histogram_abs", "")
                       .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, const at::Tensor&,
                                         const at::Tensor&, int64_t, bool)>();
  return op.call(x, keep_axes, upper, bins, max_bins, skip_zeros);
}

}  // namespace mopt
