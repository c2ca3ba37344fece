// Histogram calibration (SPEC §5): histograms of |x| streamed over calibration batches, then an
// amax chosen from them by minimal KL divergence ("entropy"), a percentile of the data, or minimal
// quantization MSE of the bin centres.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mopt/calib/calibrator.h"
#include "mopt/quant/config.h"

namespace mopt {

/// Counts |x| per channel into histograms: int64 [channels, max_bins], where channel c counts
/// min(bins[c], max_bins) equal bins over [0, upper[c]] with torch.histc's binning (a value equal
/// to upper lands in the last bin; NaN and values above upper are not counted). Channels are the
/// keep_axes of x in ascending order, flattened (none = one channel). The
/// torch.ops.mopt.histogram_abs operator (CPU, CUDA, Meta).
at::Tensor histogram_abs(const at::Tensor& x, at::IntArrayRef keep_axes, const at::Tensor& upper,
                         const at::Tensor& bins, int64_t max_bins, bool skip_zeros = false);

/// Entropy amax of one histogram (counts: integer [bins], edges: fp32 [>= bins + 1], both on
/// CPU): the edge i >= start_bin whose clipped, 2^(num_bits-1+unsigned)-level quantized
/// distribution has the least KL divergence from the clipped histogram; ties go to the larger
/// amax. O(bins * levels) with prefix sums.
float histogram_amax_entropy(const at::Tensor& counts, const at::Tensor& edges, int64_t num_bits,
                             bool is_unsigned, int64_t stride = 1, int64_t start_bin = 128);

/// Percentile amax of one histogram: edges[i] for the first bin i whose cumulative share of the
/// counts reaches percentile / 100.
float histogram_amax_percentile(const at::Tensor& counts, const at::Tensor& edges,
                                double percentile);

/// MSE amax of one histogram: the bin centre c_i (i >= start_bin) that minimizes the
/// count-weighted squared error of fake-quantizing every bin centre with amax c_i; ties go to the
/// smaller amax.
float histogram_amax_mse(const at::Tensor& counts, const at::Tensor& edges, const NumBits& num_bits,
                         bool is_unsigned, int64_t stride = 1, int64_t start_bin = 128);

/// Streams calibration batches into histograms of |x| (one per channel of the kept axes; ours:
/// the reference supports per tensor only) and computes amax from them.
///
/// Bins follow the reference calibrator: the first batch with a positive max m fixes
/// num_bins bins over [0, m]; a later batch with a larger max appends bins of the same width;
/// counts accumulate. Ours: zeros seen before the first positive batch are kept (in bin 0), and
/// NaN/Inf data makes that channel's amax NaN/Inf so calibration reports the layer.
class HistogramCalibrator : public Calibrator {
 public:
  /// axis: the input axes kept in amax (nullopt = per tensor).
  explicit HistogramCalibrator(NumBits num_bits = NumBits::integer(8),
                               std::optional<std::vector<int64_t>> axis = {},
                               bool is_unsigned = false, int64_t num_bins = 2048,
                               bool skip_zeros = false);

  /// Adds one batch. RuntimeError("amax shape changed! ...") when its kept shape differs from the
  /// batches before; ValueError when channels x num_bins exceeds 2^27 counters (1 GiB). Inside a
  /// CalibrationGroupScope the first batch's max is agreed over the group (its max), so every
  /// rank bins with the same width.
  void collect(const at::Tensor& x) override;
  /// amax in the keepdims shape of the collected batches, on their device; nullopt before the
  /// first collect. A request without a method uses the default method (set_default_method);
  /// TypeError when there is none.
  c10::optional<at::Tensor> compute_amax(const AmaxRequest& request = {}) const override;
  /// compute_amax with `method` and `options`.
  c10::optional<at::Tensor> compute_amax(HistogramMethod method,
                                         const HistogramAmaxOptions& options = {}) const;
  /// Forgets every batch.
  void reset() override;
  bool has_data() const override { return !channels_.empty(); }
  std::shared_ptr<Calibrator> clone() const override;
  std::string class_name() const override { return "HistogramCalibrator"; }
  /// Sums the ranks' counts (bins of one width, appended bins padded) so every rank holds the
  /// histograms of the union.
  void all_reduce(const ProcessGroup& group) override;

  /// The method (and options) compute_amax uses when a request names none: the histogram
  /// calibration algorithms (entropy, percentile, histogram_mse) set it.
  void set_default_method(HistogramMethod method, const HistogramAmaxOptions& options = {});
  const std::optional<AmaxRequest>& default_request() const { return default_request_; }

  const NumBits& num_bits() const { return num_bits_; }
  bool is_unsigned() const { return is_unsigned_; }
  int64_t num_bins() const { return num_bins_; }
  bool skip_zeros() const { return skip_zeros_; }
  /// Number of histograms (1 per tensor); 0 before the first collect.
  int64_t channels() const { return static_cast<int64_t>(channels_.size()); }
  /// Counts of one channel (int64 [bins], CPU); undefined while the channel has no bins yet.
  at::Tensor histogram(int64_t channel = 0) const;
  /// Bin edges of one channel (fp32, CPU): the reference's calib_bin_edges.
  at::Tensor bin_edges(int64_t channel = 0) const;

 private:
  struct Channel {
    int64_t bins = 0;        // 0 until a batch with a positive max fixes the bin width
    float upper = 0.0f;      // right edge of the last bin (histc's max)
    float width = 0.0f;      // edges[1] - edges[0]
    bool grown = false;      // edges = arange(0, edge_end, width) instead of linspace(0, edge_end)
    float edge_end = 0.0f;
    int64_t pending_zeros = 0;  // zeros seen before the bin width was fixed (they go to bin 0)
    float nonfinite = 0.0f;     // NaN or Inf once such a value was seen, else 0
  };
  void commit_batch(std::vector<Channel> next, std::vector<int64_t> shape);
  at::Tensor channel_counts(int64_t c, const at::Tensor& hist_cpu) const;
  at::Tensor channel_edges(const Channel& ch) const;

  NumBits num_bits_;
  bool is_unsigned_;
  int64_t num_bins_;
  bool skip_zeros_;
  std::optional<AmaxRequest> default_request_;
  std::vector<Channel> channels_;
  std::vector<int64_t> amax_shape_;  // keepdims shape of the first batch's reduction
  at::Tensor hist_;                  // int64 [channels, max bins], on the data's device
};

}  // namespace mopt
