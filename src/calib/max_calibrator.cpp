#include "mopt/calib/max_calibrator.h"

#include <ATen/ops/maximum.h>

#include "mopt/core/error.h"
#include "mopt/quant/fake_quant.h"

namespace mopt {

MaxCalibrator::MaxCalibrator(int64_t num_bits, std::optional<std::vector<int64_t>> axis,
                             bool is_unsigned, bool track_amax)
    : num_bits_(num_bits), axis_(std::move(axis)), is_unsigned_(is_unsigned),
      track_amax_(track_amax) {}

void MaxCalibrator::collect(const at::Tensor& x) {
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

c10::optional<at::Tensor> MaxCalibrator::compute_amax() const {
  if (!calib_amax_.defined()) return c10::nullopt;
  return calib_amax_;
}

void MaxCalibrator::reset() {
  calib_amax_ = at::Tensor();
  amaxs_.clear();
}

}  // namespace mopt
