#include "mopt/calib/max_calibrator.h"

#include <ATen/ops/full.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/tensor.h>

#include "calib/reduce_shape.h"
#include "mopt/core/error.h"
#include "mopt/quant/fake_quant.h"

namespace mopt {

MaxCalibrator::MaxCalibrator(int64_t num_bits, std::optional<std::vector<int64_t>> axis,
                             bool is_unsigned, bool track_amax)
    : Calibrator(std::move(axis)), num_bits_(num_bits), is_unsigned_(is_unsigned),
      track_amax_(track_amax) {}

void MaxCalibrator::collect(const at::Tensor& x) {
  if (x.numel() == 0) return;  // an empty batch is no data (its amax would read as 0)
  const std::vector<int64_t> keep = axis_ ? *axis_ : std::vector<int64_t>{};
  at::Tensor batch = mopt::compute_amax(x.detach(), keep);
  if (!calib_amax_.defined()) {
    calib_amax_ = batch;
  } else {
    MOPT_CHECK_STATE(calib_amax_.sizes() == batch.sizes(), "amax shape changed! (was ",
                     calib_amax_.sizes(), ", this batch gives ", batch.sizes(), ")");
    // maximum propagates NaN, so a NaN batch stays visible in the final amax.
    calib_amax_ = at::maximum(calib_amax_, batch);
  }
  if (track_amax_) amaxs_.push_back(batch.cpu());
}

c10::optional<at::Tensor> MaxCalibrator::compute_amax(const AmaxRequest&) const {
  if (!calib_amax_.defined()) return c10::nullopt;
  return calib_amax_;
}

void MaxCalibrator::reset() {
  calib_amax_ = at::Tensor();
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
}

}  // namespace mopt
