#include "mopt/calib/mse_calibrator.h"

#include <ATen/ops/add.h>
#include <ATen/ops/all.h>
#include <ATen/ops/argmin.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/square.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>

#include "calib/reduce_shape.h"
#include "core/tensor_utils.h"
#include "mopt/core/error.h"
#include "mopt/quant/config.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {

MseCalibrator::MseCalibrator(at::Tensor amax, std::optional<std::vector<int64_t>> axis,
                             int64_t num_steps, double start_multiplier, double stop_multiplier,
                             QuantFunc quant_func, ErrorFunc error_func)
    : Calibrator(std::move(axis)), num_steps_(num_steps), start_(start_multiplier),
      stop_(stop_multiplier), quant_func_(std::move(quant_func)),
      error_func_(std::move(error_func)) {
  MOPT_CHECK_VALUE(amax.defined(), "MseCalibrator needs an initial amax (run max calibration "
                   "first)");
  MOPT_CHECK_TYPE(at::isFloatingType(amax.scalar_type()),
                  "MseCalibrator amax must be a floating tensor, got ", amax.scalar_type());
  MOPT_CHECK_VALUE(num_steps >= 1, "MseCalibrator num_steps must be >= 1, got ", num_steps);
  MOPT_CHECK_VALUE(std::isfinite(start_multiplier) && std::isfinite(stop_multiplier) &&
                       start_multiplier >= 0.0 && start_multiplier <= stop_multiplier,
                   "MseCalibrator multipliers must satisfy 0 <= start_multiplier <= "
                   "stop_multiplier, got ", start_multiplier, " and ", stop_multiplier);
  initial_amax_ = amax.detach().to(at::kFloat);
  MOPT_CHECK_VALUE(initial_amax_.numel() > 0 && at::all(at::isfinite(initial_amax_)).item<bool>() &&
                       initial_amax_.min().item<float>() >= 0.0f,
                   "MseCalibrator initial amax must be finite and non-negative");
}

void MseCalibrator::collect(const at::Tensor& x_in) {
  MOPT_CHECK_STATE(static_cast<bool>(quant_func_), "Quantization function not set.");
  const at::Tensor x = x_in.detach().to(at::kFloat);
  std::vector<int64_t> keep;
  if (axis_) keep = core::normalize_axes(*axis_, x.dim(), "axis");
  std::sort(keep.begin(), keep.end());
  const auto kept = core::keep_mask_from_axes(keep, x.dim());
  std::vector<int64_t> reduce;
  int64_t kept_numel = 1;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (kept[d]) kept_numel *= x.size(d);
    else reduce.push_back(d);
  }
  MOPT_CHECK_VALUE(initial_amax_.numel() == kept_numel, "MseCalibrator initial amax of shape ",
                   core::shape_str(initial_amax_.sizes()), " does not match the kept axes ",
                   core::shape_str(keep), " of a batch of shape ", core::shape_str(x.sizes()));
  if (!candidates_.defined()) {
    candidates_ = at::linspace(start_, stop_, num_steps_, x.options());
    losses_.assign(num_steps_, at::Tensor());
  }
  const at::Tensor amax = initial_amax_.to(x.device());
  const at::Tensor candidates = candidates_.to(x.device());
  for (int64_t s = 0; s < num_steps_; ++s) {
    const at::Tensor xq = quant_func_(x, at::mul(amax, candidates[s]));
    const at::Tensor err = error_func_ ? error_func_(x, xq) : at::square(at::sub(x, xq));
    MOPT_CHECK_VALUE(err.sizes() == x.sizes(), "MseCalibrator error of shape ",
                     core::shape_str(err.sizes()), " does not match the batch shape ",
                     core::shape_str(x.sizes()), " (error_func must be elementwise)");
    // Summing over no dims would reduce everything: keep the error as it is instead.
    at::Tensor loss = reduce.empty() && x.dim() > 0
                          ? err.to(at::kDouble)
                          : at::sum(err, reduce, /*keepdim=*/false, at::kDouble);
    losses_[s] = losses_[s].defined() ? at::add(losses_[s], loss.to(losses_[s].device())) : loss;
  }
}

c10::optional<at::Tensor> MseCalibrator::compute_amax(const AmaxRequest&) const {
  if (losses_.empty() || !losses_[0].defined()) return c10::nullopt;
  const at::Tensor best = at::argmin(at::stack(losses_), 0);  // first minimum: smaller multiplier
  const at::Tensor multiplier = candidates_.to(best.device()).index_select(0, best.reshape({-1}));
  return at::mul(initial_amax_.to(best.device()), multiplier.reshape(initial_amax_.sizes()));
}

void MseCalibrator::reset() {
  candidates_ = at::Tensor();
  losses_.clear();
}

std::shared_ptr<Calibrator> MseCalibrator::clone() const {
  auto c = std::make_shared<MseCalibrator>(*this);
  for (auto& l : c->losses_) {
    if (l.defined()) l = l.clone();
  }
  return c;
}

void MseCalibrator::all_reduce(const ProcessGroup& group) {
  if (group.size <= 1) return;
  // kept shape of the losses; a rank without data contributes zeros of it
  std::optional<std::vector<int64_t>> mine;
  if (has_data()) mine = losses_[0].sizes().vec();
  const auto shape = calib::agree_on_shape(group, mine);
  if (!shape) return;
  const auto options = at::TensorOptions().dtype(at::kDouble);
  at::Tensor stacked = has_data() ? at::stack(losses_)
                                  : at::zeros([&] {
                                      std::vector<int64_t> s = {num_steps_};
                                      s.insert(s.end(), shape->begin(), shape->end());
                                      return s;
                                    }(), options);
  stacked = group.all_reduce(stacked, ReduceOp::kSum);
  if (!candidates_.defined()) {
    candidates_ = at::linspace(start_, stop_, num_steps_, at::TensorOptions().dtype(at::kFloat));
  }
  const std::vector<at::Tensor> parts = stacked.unbind(0);
  losses_.assign(parts.begin(), parts.end());
}

MseCalibrator::QuantFunc quantizer_view_quant_func(const QuantizerAttributeConfig& cfg) {
  const ResolvedFormat format = resolve_format(cfg);
  MOPT_CHECK_IMPLEMENTED(format.info->histogram_calibration, "MSE calibration searches the amax "
                         "of formats with a float scale (integer, minifloat); ", format.name,
                         " quantizes its scales and is not supported");
  const NumBits nb = cfg.num_bits;
  if (nb.is_float) {
    return [nb](const at::Tensor& x, const at::Tensor& amax) {
      return fake_quant_fp(x, amax, nb.exponent, nb.mantissa);
    };
  }
  const bool is_unsigned = cfg.is_unsigned, narrow = cfg.narrow_range, full = cfg.full_range;
  return [nb, is_unsigned, narrow, full](const at::Tensor& x, const at::Tensor& amax) {
    return fake_quant_int(x, amax, nb.bits, is_unsigned, narrow, false, full);
  };
}

}  // namespace mopt
