#include "mopt/calib/step_calibrator.h"

#include <ATen/ops/maximum.h>
#include <ATen/ops/quantile.h>
#include <ATen/ops/stack.h>

#include <cmath>

#include "mopt/core/error.h"
#include "mopt/quant/fake_quant.h"

namespace mopt {

StepCollect parse_step_collect(const std::string& name) {
  if (name == "max") return StepCollect::kMax;
  if (name == "mean") return StepCollect::kMean;
  MOPT_CHECK_VALUE(false, "step collect must be 'max' or 'mean', got '", name, "'");
  return StepCollect::kMax;
}

std::string step_collect_name(StepCollect c) { return c == StepCollect::kMax ? "max" : "mean"; }

StepAmaxCalibrator::StepAmaxCalibrator(int64_t num_bits, std::optional<std::vector<int64_t>> axis,
                                       bool is_unsigned, int64_t num_steps, double percentile,
                                       StepCollect collect)
    : Calibrator(std::move(axis)), num_bits_(num_bits), is_unsigned_(is_unsigned),
      num_steps_(num_steps), percentile_(percentile), collect_(collect) {
  MOPT_CHECK_VALUE(num_steps >= 1, "StepAmaxCalibrator: num_steps must be >= 1 (the model calls "
                   "of one sampling run), got ", num_steps);
  MOPT_CHECK_VALUE(std::isfinite(percentile) && percentile >= 0.0 && percentile <= 100.0,
                   "StepAmaxCalibrator: percentile must be in [0, 100], got ", percentile);
  step_amax_.resize(static_cast<size_t>(num_steps));
  step_calls_.assign(static_cast<size_t>(num_steps), 0);
}

void StepAmaxCalibrator::collect(const at::Tensor& x) {
  if (x.numel() == 0) return;  // an empty batch is no data (and no step)
  const std::vector<int64_t> keep = axis_ ? *axis_ : std::vector<int64_t>{};
  const at::Tensor amax = mopt::compute_amax(x.detach(), keep).to(at::kFloat);
  const size_t step = static_cast<size_t>(calls_ % num_steps_);
  for (const at::Tensor& t : step_amax_) {
    if (!t.defined()) continue;
    MOPT_CHECK_STATE(t.sizes() == amax.sizes(), "amax shape changed! (was ", t.sizes(),
                     ", this call gives ", amax.sizes(), ")");
    break;
  }
  at::Tensor& slot = step_amax_[step];
  if (!slot.defined()) {
    slot = amax.clone();
  } else if (collect_ == StepCollect::kMax) {
    slot = at::maximum(slot, amax);  // propagates NaN
  } else {
    slot = slot + amax;
  }
  ++step_calls_[step];
  ++calls_;
}

std::vector<at::Tensor> StepAmaxCalibrator::step_amaxes() const {
  std::vector<at::Tensor> out;
  for (size_t s = 0; s < step_amax_.size(); ++s) {
    if (!step_amax_[s].defined()) {
      out.emplace_back();
    } else {
      out.push_back(collect_ == StepCollect::kMean
                        ? step_amax_[s] / static_cast<double>(step_calls_[s])
                        : step_amax_[s].clone());
    }
  }
  return out;
}

c10::optional<at::Tensor> StepAmaxCalibrator::compute_amax(const AmaxRequest&) const {
  if (calls_ == 0) return c10::nullopt;
  std::vector<at::Tensor> reached;
  for (const at::Tensor& t : step_amaxes()) {
    if (t.defined()) reached.push_back(t);
  }
  const at::Tensor stacked = at::stack(reached, 0);
  return at::quantile(stacked, percentile_ / 100.0, /*dim=*/0, /*keepdim=*/false, "linear");
}

void StepAmaxCalibrator::reset() {
  calls_ = 0;
  step_amax_.assign(static_cast<size_t>(num_steps_), at::Tensor());
  step_calls_.assign(static_cast<size_t>(num_steps_), 0);
}

std::shared_ptr<Calibrator> StepAmaxCalibrator::clone() const {
  auto c = std::make_shared<StepAmaxCalibrator>(*this);
  for (auto& t : c->step_amax_) {
    if (t.defined()) t = t.clone();
  }
  return c;
}

}  // namespace mopt
