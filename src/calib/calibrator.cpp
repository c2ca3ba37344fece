#include "mopt/calib/calibrator.h"

#include "mopt/core/error.h"

namespace mopt {

HistogramMethod parse_histogram_method(const std::string& name) {
  if (name == "entropy") return HistogramMethod::kEntropy;
  if (name == "percentile") return HistogramMethod::kPercentile;
  if (name == "mse") return HistogramMethod::kMse;
  MOPT_CHECK_TYPE(false, "Unknown calibration method '", name,
                  "'; expected 'entropy', 'percentile' or 'mse'");
  return HistogramMethod::kEntropy;
}

void Calibrator::all_reduce(const ProcessGroup& group) {
  MOPT_CHECK_IMPLEMENTED(group.size <= 1, class_name(), " cannot combine statistics across "
                         "processes; calibrate with one process or a built-in calibrator");
}

void Calibrator::set_axis(std::optional<std::vector<int64_t>> axis) {
  if (axis == axis_) return;
  MOPT_CHECK_STATE(!has_data(), "amax shape changed! (the calibrator's axis changed mid-way)");
  axis_ = std::move(axis);
  on_axis_change();
}

}  // namespace mopt
