// The calibrator protocol every calibrator implements (max, histogram, MSE, and from Python any
// object with collect / compute_amax / reset): a quantizer feeds it the calibration view of each
// batch, then asks once for amax. The quantizer core owns one, builds and rebuilds it as its config
// asks, and sets the kept axes for each input's rank.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mopt/core/distributed.h"

namespace mopt {

/// How a histogram turns into amax (HistogramCalibrator::compute_amax).
enum class HistogramMethod { kEntropy, kPercentile, kMse };

/// "entropy" | "percentile" | "mse"; TypeError for any other name (as the reference raises).
HistogramMethod parse_histogram_method(const std::string& name);

/// Options of the histogram amax searches (the reference's keyword arguments).
struct HistogramAmaxOptions {
  int64_t stride = 1;         // entropy / mse: step between candidate bins
  int64_t start_bin = 128;    // entropy / mse: first candidate bin
  double percentile = 99.99;  // percentile: share of the data below amax, in [0, 100]
};

/// What compute_amax is asked for: calibrators other than histograms ignore it; a histogram
/// calibrator without a method uses its default one (or raises when it has none).
struct AmaxRequest {
  std::optional<HistogramMethod> method;
  HistogramAmaxOptions options;
};

/// Base of calibrators: collect(x) per batch, compute_amax() once, reset().
class Calibrator {
 public:
  /// axis: the input axes kept in amax (nullopt = per tensor).
  explicit Calibrator(std::optional<std::vector<int64_t>> axis = {}) : axis_(std::move(axis)) {}
  virtual ~Calibrator() = default;

  /// Folds one batch (the quantizer's calibration view) in.
  virtual void collect(const at::Tensor& x) = 0;
  /// amax in the keepdims shape of the batches; nullopt when nothing was collected.
  virtual c10::optional<at::Tensor> compute_amax(const AmaxRequest& request = {}) const = 0;
  /// Forgets everything collected.
  virtual void reset() = 0;
  /// True once a batch was collected.
  virtual bool has_data() const = 0;
  /// A deep copy (collected statistics included).
  virtual std::shared_ptr<Calibrator> clone() const = 0;
  /// Class name for reprs and messages ("MaxCalibrator").
  virtual std::string class_name() const = 0;
  /// Combines what every rank of `group` collected so that each holds the statistics of the
  /// union; every rank calls it once, in the same order (calibrators that cannot raise).
  virtual void all_reduce(const ProcessGroup& group);

  /// The kept axes.
  const std::optional<std::vector<int64_t>>& axis() const { return axis_; }
  /// Sets the kept axes (a quantizer does this per input rank before collecting). Changing them
  /// after data arrived raises RuntimeError("amax shape changed! ...").
  void set_axis(std::optional<std::vector<int64_t>> axis);

 protected:
  /// Called by set_axis when the axes change (before any data): rebuild per-axis state.
  virtual void on_axis_change() {}

  std::optional<std::vector<int64_t>> axis_;
};

}  // namespace mopt
