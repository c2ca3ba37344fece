#include "mopt/calib/max_calibrator.h"

#include <ATen/ops/full.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/tensor.h>

#include <limits>
#include <tuple>

#include "calib/reduce_shape.h"
#include "mopt/core/error.h"
#include "mopt/quant/fake_quant.h"

namespace mopt {

MaxCalibrator::MaxCalibrator(int64_t num_bits, std::optional<std::vector<int64_t>> axis,
                             bool is_unsigned, bool track_amax, bool asymmetric)
    : Calibrator(std::move(axis)), num_bits_(num_bits), is_unsigned_(is_unsigned),
      track_amax_(track_amax), asymmetric_(asymmetric) {}

void MaxCalibrator::collect(const at::Tensor& x) {
  if (x.numel() == 0) return;  // an empty batch is no data (its amax would read as 0)
  const std::vector<int64_t> keep = axis_ ? *axis_ : std::vector<int64_t>{};
  at::Tensor lo, hi;
  if (asymmetric_) std::tie(lo, hi) = mopt::compute_min_max(x.detach(), keep);
  // max |x| = max(-min, max): an asymmetric calibrator reads the data once
  at::Tensor batch =
      asymmetric_ ? at::maximum(at::neg(lo), hi) : mopt::compute_amax(x.detach(), keep);
  if (!calib_amax_.defined()) {
    calib_amax_ = batch;
  } else {
    MOPT_CHECK_STATE(calib_amax_.sizes() == batch.sizes(), "amax shape changed! (was ",
                     calib_amax_.sizes(), ", this batch gives ", batch.sizes(), ")");
    // maximum propagates NaN, so a NaN batch stays visible in the final amax.
    calib_amax_ = at::maximum(calib_amax_, batch);
  }
  if (track_amax_) amaxs_.push_back(batch.cpu());
  if (asymmetric_) {
    // minimum / maximum propagate NaN like the amax above
    calib_min_ = calib_min_.defined() ? at::minimum(calib_min_, lo) : lo;
    calib_max_ = calib_max_.defined() ? at::maximum(calib_max_, hi) : hi;
  }
}

c10::optional<at::Tensor> MaxCalibrator::compute_amax(const AmaxRequest&) const {
  if (!calib_amax_.defined()) return c10::nullopt;
  if (asymmetric_) return std::get<0>(int_asym_range(calib_min_, calib_max_, num_bits_));
  return calib_amax_;
}

c10::optional<at::Tensor> MaxCalibrator::compute_zero_point() const {
  if (!asymmetric_ || !calib_min_.defined()) return c10::nullopt;
  return std::get<1>(int_asym_range(calib_min_, calib_max_, num_bits_));
}

void MaxCalibrator::reset() {
  calib_amax_ = at::Tensor();
  calib_min_ = at::Tensor();
  calib_max_ = at::Tensor();
  amaxs_.clear();
}

void MaxCalibrator::load_state(const at::Tensor& calib_amax, std::vector<at::Tensor> amaxs) {
  MOPT_CHECK_VALUE(!calib_amax.defined() || calib_amax.scalar_type() == at::kFloat,
                   "MaxCalibrator state: amax must be float32, got ", calib_amax.scalar_type());
  calib_amax_ = calib_amax;
  amaxs_ = std::move(amaxs);
}

std::shared_ptr<Calibrator> MaxCalibrator::clone() const {
  auto c = std::make_shared<MaxCalibrator>(*this);
  if (calib_amax_.defined()) c->calib_amax_ = calib_amax_.clone();
  if (calib_min_.defined()) c->calib_min_ = calib_min_.clone();
  if (calib_max_.defined()) c->calib_max_ = calib_max_.clone();
  return c;
}

void MaxCalibrator::all_reduce(const ProcessGroup& group) {
  if (group.size <= 1) return;
  const std::optional<std::vector<int64_t>> shape = calib::agree_on_shape(
      group, calib_amax_.defined() ? std::optional(calib_amax_.sizes().vec()) : std::nullopt);
  if (!shape) return;  // no rank collected anything
  // |x| >= 0, so a rank without data contributes zeros
  const at::Tensor mine = calib_amax_.defined()
                              ? calib_amax_
                              : at::zeros(*shape, at::TensorOptions().dtype(at::kFloat));
  MOPT_CHECK_STATE(mine.sizes() == at::IntArrayRef(*shape), "amax shape changed! (this process "
                   "collected ", mine.sizes(), ", another ", at::IntArrayRef(*shape), ")");
  calib_amax_ = group.all_reduce(mine, ReduceOp::kMax);
  if (asymmetric_) {
    // a rank without data contributes +inf / -inf, which the range widened to 0 ignores
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    const double inf = std::numeric_limits<double>::infinity();
    const at::Tensor lo = calib_min_.defined() ? calib_min_ : at::full(*shape, inf, opts);
    const at::Tensor hi = calib_max_.defined() ? calib_max_ : at::full(*shape, -inf, opts);
    calib_min_ = at::neg(group.all_reduce(at::neg(lo), ReduceOp::kMax));
    calib_max_ = group.all_reduce(hi, ReduceOp::kMax);
  }
}

}  // namespace mopt
