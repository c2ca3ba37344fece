// Max calibration: the running elementwise max of |x| reduced over every dim but the kept axes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <optional>
#include <vector>

#include "mopt/calib/calibrator.h"

namespace mopt {

/// Streams calibration batches into a running amax (memory: one amax tensor).
class MaxCalibrator : public Calibrator {
 public:
  /// axis: the input axes kept in amax (nullopt = per tensor); track_amax keeps every batch's
  /// amax as well.
  /// asymmetric: also keeps the signed running min and max, and compute_amax returns the half
  /// width of [min, max] (widened to hold 0) that asymmetric integer quantization scales by,
  /// with compute_zero_point the matching zero-point codes.
  explicit MaxCalibrator(int64_t num_bits = 8, std::optional<std::vector<int64_t>> axis = {},
                         bool is_unsigned = false, bool track_amax = false,
                         bool asymmetric = false);

  /// Folds one batch in. RuntimeError("amax shape changed!") when its reduced shape differs from
  /// the batches before.
  void collect(const at::Tensor& x) override;
  /// The amax so far (nullopt before the first collect). NaN or inf in any batch shows here.
  c10::optional<at::Tensor> compute_amax(const AmaxRequest& request = {}) const override;
  /// The zero points of an asymmetric calibrator (nullopt before the first collect, or when not
  /// asymmetric): integer codes in compute_amax's shape.
  c10::optional<at::Tensor> compute_zero_point() const;
  bool asymmetric() const { return asymmetric_; }
  /// Forgets every batch.
  void reset() override;
  bool has_data() const override { return calib_amax_.defined(); }
  std::shared_ptr<Calibrator> clone() const override;
  std::string class_name() const override { return "MaxCalibrator"; }
  /// The element-wise max over the ranks (a rank that saw no batch contributes nothing).
  void all_reduce(const ProcessGroup& group) override;

  int64_t num_bits() const { return num_bits_; }
  bool is_unsigned() const { return is_unsigned_; }
  bool track_amax() const { return track_amax_; }
  /// Per-batch amaxs when track_amax is on.
  const std::vector<at::Tensor>& amaxs() const { return amaxs_; }
  /// Restores what compute_amax() and amaxs() returned (an undefined calib_amax: no data), e.g.
  /// when a pickled calibrator is loaded.
  void load_state(const at::Tensor& calib_amax, std::vector<at::Tensor> amaxs);

 private:
  int64_t num_bits_;
  bool is_unsigned_;
  bool track_amax_;
  bool asymmetric_;
  at::Tensor calib_amax_;
  at::Tensor calib_min_, calib_max_;  // asymmetric: signed running min and max
  std::vector<at::Tensor> amaxs_;
};

}  // namespace mopt
