#include "mopt/calib/histogram_calibrator.h"

#include <ATen/Parallel.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/tensor.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "calib/reduce_shape.h"
#include "core/tensor_utils.h"
#include "fake_quant/fake_quant_math.h"
#include "histogram/histogram.h"
#include "mopt/core/error.h"
#include "mopt/quant/fake_quant.h"

namespace mopt {
namespace {

namespace fq = kernels::fake_quant;

// KL values this close to the minimum count as ties. The prefix-sum evaluation differs from a
// term-by-term sum by a few ulps of log(count) sums (~1e-14 for any realistic count); a genuine
// difference between candidates is many orders of magnitude larger.
constexpr double kEntropyTieTolerance = 1e-12;

// Histogram counters one calibrator may hold (1 GiB of int64): per-block histograms of a large
// weight would otherwise exhaust memory.
constexpr int64_t kMaxHistogramCounters = int64_t{1} << 27;

const char* method_name(HistogramMethod m) {
  switch (m) {
    case HistogramMethod::kEntropy: return "entropy";
    case HistogramMethod::kPercentile: return "percentile";
    case HistogramMethod::kMse: return "mse";
  }
  return "?";
}

// One histogram as host arrays: counts (as exact doubles) and at least counts + 1 edges.
struct HostHistogram {
  std::vector<double> counts;
  std::vector<float> edges;
};

HostHistogram host_histogram(const at::Tensor& counts, const at::Tensor& edges) {
  MOPT_CHECK_VALUE(counts.defined() && edges.defined(), "histogram counts and edges are required");
  MOPT_CHECK_VALUE(counts.dim() == 1 && edges.dim() == 1,
                   "histogram counts and edges must be 1-D, got shapes ",
                   core::shape_str(counts.sizes()), " and ", core::shape_str(edges.sizes()));
  MOPT_CHECK_VALUE(counts.numel() >= 1 && edges.numel() >= counts.numel() + 1,
                   "a histogram of ", counts.numel(), " bins needs at least ", counts.numel() + 1,
                   " edges, got ", edges.numel());
  MOPT_CHECK_TYPE(!counts.is_complex() && !edges.is_complex() &&
                      at::isFloatingType(edges.scalar_type()),
                  "histogram counts must be real and edges floating, got ", counts.scalar_type(),
                  " and ", edges.scalar_type());
  const at::Tensor c = counts.detach().to(at::kCPU).to(at::kDouble).contiguous();
  const at::Tensor e = edges.detach().to(at::kCPU).to(at::kFloat).contiguous();
  HostHistogram h;
  h.counts.assign(c.const_data_ptr<double>(), c.const_data_ptr<double>() + c.numel());
  h.edges.assign(e.const_data_ptr<float>(), e.const_data_ptr<float>() + e.numel());
  for (double v : h.counts) {
    MOPT_CHECK_VALUE(v >= 0.0 && std::isfinite(v), "histogram counts must be finite and "
                     "non-negative, got ", v);
  }
  return h;
}

void check_candidates(int64_t stride, int64_t start_bin, int64_t min_start, int64_t last,
                      int64_t bins, HistogramMethod method) {
  MOPT_CHECK_VALUE(stride >= 1, method_name(method), " calibration: stride must be >= 1, got ",
                   stride);
  MOPT_CHECK_VALUE(start_bin >= min_start, method_name(method),
                   " calibration: start_bin must be >= ", min_start, ", got ", start_bin);
  MOPT_CHECK_VALUE(start_bin <= last, method_name(method), " calibration: start_bin ", start_bin,
                   " leaves no candidate in a histogram of ", bins,
                   " bins (lower start_bin or raise num_bins)");
}

// KL(reference || quantized) for keeping the first i bins, from prefix sums over the bins:
// P = counts, PL = sum b log b, NZ = non-empty bins. With r_j the reference (the tail folded into
// bin i-1) and d_j the quantized counts (each group's mass spread evenly over its non-empty
// bins), KL = log(S/T) + sum_j r_j (log r_j - log d_j) / T, where T is the total and S the mass of
// the first i bins; within a group, sum_j b_j log d_j = B_g log(B_g / n_g), so each candidate
// costs O(levels) instead of O(i).
double entropy_candidate_kl(const std::vector<double>& b, const std::vector<double>& P,
                            const std::vector<double>& PL, const std::vector<int64_t>& NZ,
                            int64_t i, int64_t levels) {
  const double total = P.back();
  const double kept = P[i];
  if (!(kept > 0.0)) return std::numeric_limits<double>::infinity();  // nothing left to compare
  const double last = b[i - 1];
  const double r = last + (total - kept);
  // The tail lands in an empty bin that the quantized distribution leaves at zero.
  if (r > 0.0 && last == 0.0) return std::numeric_limits<double>::infinity();
  double inner;
  if (levels >= i) {
    // Every bin is a group of its own: the distributions differ only in the last bin.
    inner = r > 0.0 ? r * (std::log(r) - std::log(last)) : 0.0;
  } else {
    double group_sum = 0.0;
    double last_log_avg = 0.0;
    for (int64_t g = 0; g < levels; ++g) {
      // Bin j belongs to group floor(j * levels / i) (the reference's digitize over
      // linspace(0, i, levels + 1), exact because levels is a power of two).
      const int64_t s = (g * i + levels - 1) / levels;
      const int64_t e = ((g + 1) * i + levels - 1) / levels;
      const int64_t n = NZ[e] - NZ[s];
      if (n == 0) continue;
      const double mass = P[e] - P[s];
      const double log_avg = std::log(mass / static_cast<double>(n));
      // The last bin's reference count is r, not b: it is accounted for separately.
      group_sum += (e == i ? mass - last : mass) * log_avg;
      if (e == i) last_log_avg = log_avg;
    }
    inner = PL[i - 1] - group_sum + (r > 0.0 ? r * (std::log(r) - last_log_avg) : 0.0);
  }
  return std::log(kept) - std::log(total) + inner / total;
}

float entropy_amax(std::vector<double> b, const std::vector<float>& edges, int64_t levels,
                   int64_t stride, int64_t start_bin) {
  const int64_t bins = static_cast<int64_t>(b.size());
  MOPT_CHECK_VALUE(bins >= 2, "entropy calibration needs a histogram of at least 2 bins, got ",
                   bins);
  check_candidates(stride, start_bin, 1, bins, bins, HistogramMethod::kEntropy);
  b[0] = b[1];  // the reference discounts the zero bin this way
  std::vector<double> P(bins + 1, 0.0), PL(bins + 1, 0.0);
  std::vector<int64_t> NZ(bins + 1, 0);
  for (int64_t j = 0; j < bins; ++j) {
    P[j + 1] = P[j] + b[j];
    PL[j + 1] = PL[j] + (b[j] > 0.0 ? b[j] * std::log(b[j]) : 0.0);
    NZ[j + 1] = NZ[j] + (b[j] > 0.0 ? 1 : 0);
  }
  std::vector<int64_t> cand;
  std::vector<double> kl;
  for (int64_t i = start_bin; i <= bins; i += stride) {
    cand.push_back(i);
    kl.push_back(entropy_candidate_kl(b, P, PL, NZ, i, levels));
  }
  const double best = *std::min_element(kl.begin(), kl.end());
  // Ties go to the larger amax: the last candidate within tolerance of the minimum (all of them
  // when every candidate is infinite).
  size_t pick = kl.size() - 1;
  while (pick > 0 && !(kl[pick] <= best + kEntropyTieTolerance || std::isinf(best))) --pick;
  return edges[cand[pick]];
}

float percentile_amax(const std::vector<double>& counts, const std::vector<float>& edges,
                      double percentile) {
  MOPT_CHECK_VALUE(percentile >= 0.0 && percentile <= 100.0,
                   "Invalid percentile. Must be in range 0 <= percentile <= 100, got ", percentile);
  double total = 0.0;
  for (double c : counts) total += c;
  const double target = percentile / 100.0;
  // Same rounding as the reference's cumsum(hist / total): divide each bin, then accumulate.
  double cdf = 0.0;
  const int64_t bins = static_cast<int64_t>(counts.size());
  for (int64_t j = 0; j < bins; ++j) {
    cdf += counts[j] / total;
    if (cdf >= target) return edges[j];
  }
  return edges[bins];
}

float mse_amax(const std::vector<double>& counts, const std::vector<float>& edges,
               const NumBits& nb, bool is_unsigned, int64_t stride, int64_t start_bin) {
  const int64_t bins = static_cast<int64_t>(counts.size());
  check_candidates(stride, start_bin, 0, bins - 1, bins, HistogramMethod::kMse);
  std::vector<float> centers(bins);
  for (int64_t j = 0; j < bins; ++j) centers[j] = (edges[j + 1] + edges[j]) / 2.0f;
  // Only occupied bins contribute to the error.
  std::vector<float> xs;
  std::vector<double> ws;
  for (int64_t j = 0; j < bins; ++j) {
    if (counts[j] > 0.0) {
      xs.push_back(centers[j]);
      ws.push_back(counts[j]);
    }
  }
  auto weighted_error = [&](const auto& q, float amax) {
    const float scale = fq::scale_from_amax(amax, q.max_value());
    double err = 0.0;
    for (size_t k = 0; k < xs.size(); ++k) {
      const double d = static_cast<double>(fq::apply_scaled(q, xs[k], scale)) - xs[k];
      err += ws[k] * d * d;
    }
    return err;
  };
  double best = std::numeric_limits<double>::infinity();
  int64_t best_i = start_bin;
  for (int64_t i = start_bin; i < bins; i += stride) {
    double err;
    if (nb.is_float) {
      const fq::MinifloatQuant q{nb.mantissa, fq::minifloat_min_exponent(nb.exponent),
                                 fq::minifloat_max(nb.exponent, nb.mantissa)};
      err = weighted_error(q, centers[i]);
    } else {
      // The reference quantizes the centres with fake_tensor_quant's narrow range.
      const fq::IntQuant q = fq::make_int_quant(nb.bits, is_unsigned, true, false);
      err = weighted_error(q, centers[i]);
    }
    if (err < best) {  // strict: the first (smallest) amax wins ties
      best = err;
      best_i = i;
    }
  }
  return centers[best_i];
}

void check_num_bits(const NumBits& nb) {
  if (nb.is_float) {
    MOPT_CHECK_VALUE(nb.exponent >= 1 && nb.exponent <= 5 && nb.mantissa >= 0 && nb.mantissa <= 10,
                     "histogram calibrator num_bits (", nb.exponent, ", ", nb.mantissa,
                     ") is not a supported minifloat format");
  } else {
    MOPT_CHECK_VALUE(nb.bits >= 1 && nb.bits <= 16,
                     "histogram calibrator num_bits must be in [1, 16], got ", nb.bits);
  }
}

int64_t entropy_levels(const NumBits& nb, bool is_unsigned) {
  MOPT_CHECK_IMPLEMENTED(!nb.is_float, "entropy calibration needs an integer num_bits; (",
                         nb.exponent, ", ", nb.mantissa,
                         ") is a minifloat format (use 'percentile' or 'mse')");
  return int64_t{1} << (nb.bits - 1 + (is_unsigned ? 1 : 0));
}

}  // namespace

float histogram_amax_entropy(const at::Tensor& counts, const at::Tensor& edges, int64_t num_bits,
                             bool is_unsigned, int64_t stride, int64_t start_bin) {
  const NumBits nb = NumBits::integer(static_cast<int>(num_bits));
  MOPT_CHECK_VALUE(num_bits >= 1 && num_bits <= 16, "num_bits must be in [1, 16], got ", num_bits);
  HostHistogram h = host_histogram(counts, edges);
  return entropy_amax(std::move(h.counts), h.edges, entropy_levels(nb, is_unsigned), stride,
                      start_bin);
}

float histogram_amax_percentile(const at::Tensor& counts, const at::Tensor& edges,
                                double percentile) {
  const HostHistogram h = host_histogram(counts, edges);
  return percentile_amax(h.counts, h.edges, percentile);
}

float histogram_amax_mse(const at::Tensor& counts, const at::Tensor& edges, const NumBits& num_bits,
                         bool is_unsigned, int64_t stride, int64_t start_bin) {
  check_num_bits(num_bits);
  const HostHistogram h = host_histogram(counts, edges);
  return mse_amax(h.counts, h.edges, num_bits, is_unsigned, stride, start_bin);
}

HistogramCalibrator::HistogramCalibrator(NumBits num_bits,
                                         std::optional<std::vector<int64_t>> axis,
                                         bool is_unsigned, int64_t num_bins, bool skip_zeros)
    : Calibrator(std::move(axis)), num_bits_(num_bits), is_unsigned_(is_unsigned),
      num_bins_(num_bins), skip_zeros_(skip_zeros) {
  check_num_bits(num_bits_);
  MOPT_CHECK_VALUE(num_bins >= 1 && num_bins <= kernels::histogram::kMaxHistogramBins,
                   "num_bins must be in [1, ", kernels::histogram::kMaxHistogramBins, "], got ",
                   num_bins);
}

void HistogramCalibrator::collect(const at::Tensor& x_in) {
  const at::Tensor x = x_in.detach();
  core::kernel_dtype(x, "calibration input");
  std::vector<int64_t> keep;
  if (axis_) keep = core::normalize_axes(*axis_, x.dim(), "axis");
  std::sort(keep.begin(), keep.end());
  std::vector<int64_t> shape(x.dim(), 1);
  int64_t nchannels = 1;
  for (int64_t a : keep) {
    shape[a] = x.size(a);
    nchannels *= x.size(a);
  }
  if (!channels_.empty() && axis_) {
    MOPT_CHECK_STATE(shape == amax_shape_, "amax shape changed! (was ",
                     core::shape_str(amax_shape_), ", this batch gives ", core::shape_str(shape),
                     ")");
  }
  MOPT_CHECK_VALUE(nchannels <= kMaxHistogramCounters / num_bins_, "histogram calibration of ",
                   nchannels, " channels x ", num_bins_, " bins would hold more than ",
                   kMaxHistogramCounters, " counters (shape ", core::shape_str(x.sizes()),
                   ", kept axes ", core::shape_str(keep),
                   "); use max calibration for this quantizer or fewer bins");
  if (x.numel() == 0) return;
  // The batch is applied to a copy of the channel states, committed once it is counted, so a
  // failure leaves the calibrator as it was.
  std::vector<Channel> next = channels_;
  if (next.empty()) next.resize(nchannels);
  const int64_t length = x.numel() / nchannels;
  at::Tensor batch_max = mopt::compute_amax(x, keep).reshape({nchannels}).to(at::kCPU);
  const auto& group = calibration_group();
  if (channels_.empty() && group && group->size > 1) {
    // Every rank fixes its bin width from the same first-batch max (the group's), so the counts
    // line up bin for bin when they are summed.
    batch_max = group->all_reduce(batch_max, ReduceOp::kMax);
  }
  batch_max = batch_max.contiguous();
  const float* m = batch_max.const_data_ptr<float>();
  std::vector<float> upper(nchannels, 0.0f);
  std::vector<int64_t> bins(nchannels, 0);
  int64_t max_bins = 0;
  for (int64_t c = 0; c < nchannels; ++c) {
    Channel& ch = next[c];
    const float mc = m[c];
    if (!std::isfinite(mc)) {
      if (!std::isnan(ch.nonfinite)) ch.nonfinite = mc;  // NaN outranks Inf
      continue;
    }
    if (ch.bins == 0) {
      if (mc == 0.0f) {
        if (!skip_zeros_) ch.pending_zeros += length;
        continue;
      }
      const at::Tensor e = at::linspace(0.0, static_cast<double>(mc), num_bins_ + 1, at::kFloat);
      ch.bins = num_bins_;
      ch.grown = false;
      ch.edge_end = mc;
      ch.upper = e[num_bins_].item<float>();
      ch.width = e[1].item<float>() - e[0].item<float>();
    } else if (mc > ch.upper) {
      // Append bins of the same width up to the new max (the reference's torch_hist growth).
      const float ratio = mc / ch.width;
      const float grown_bins = std::ceil(ratio);
      MOPT_CHECK_STATE(ch.width > 0.0f && std::isfinite(ratio) &&
                           grown_bins <= static_cast<float>(kernels::histogram::kMaxHistogramBins),
                       "histogram calibration: reaching the new max ", mc, " with bins of width ",
                       ch.width, " (fixed by the first batch, max ", ch.edge_end,
                       ") would need more than ", kernels::histogram::kMaxHistogramBins,
                       " bins; calibrate with a representative first batch");
      const float end = mc + ch.width;
      const at::Tensor e = at::arange(0.0, static_cast<double>(end),
                                      static_cast<double>(ch.width), at::kFloat);
      ch.bins = static_cast<int64_t>(grown_bins);
      ch.grown = true;
      ch.edge_end = end;
      ch.upper = e[e.numel() - 1].item<float>();
    }
    bins[c] = ch.bins;
    upper[c] = ch.upper;
    max_bins = std::max(max_bins, ch.bins);
  }
  if (max_bins == 0) {
    commit_batch(std::move(next), shape);
    return;
  }
  const int64_t width = hist_.defined() ? std::max(hist_.size(1), max_bins) : max_bins;
  const auto opts = at::TensorOptions().device(x.device());
  const at::Tensor counts = histogram_abs(x, keep, at::tensor(upper, opts.dtype(at::kFloat)),
                                          at::tensor(bins, opts.dtype(at::kLong)), width,
                                          skip_zeros_);
  if (!hist_.defined()) {
    hist_ = counts;
  } else {
    at::Tensor h = hist_.to(x.device());
    if (h.size(1) < width) h = at::constant_pad_nd(h, {0, width - h.size(1)});
    hist_ = h.add_(counts);
  }
  commit_batch(std::move(next), shape);
}

void HistogramCalibrator::commit_batch(std::vector<Channel> next, std::vector<int64_t> shape) {
  if (channels_.empty()) amax_shape_ = std::move(shape);
  channels_ = std::move(next);
}

at::Tensor HistogramCalibrator::channel_edges(const Channel& ch) const {
  if (ch.grown) {
    return at::arange(0.0, static_cast<double>(ch.edge_end), static_cast<double>(ch.width),
                      at::kFloat);
  }
  return at::linspace(0.0, static_cast<double>(ch.edge_end), num_bins_ + 1, at::kFloat);
}

at::Tensor HistogramCalibrator::channel_counts(int64_t c, const at::Tensor& hist_cpu) const {
  const Channel& ch = channels_[c];
  at::Tensor counts = hist_cpu[c].narrow(0, 0, ch.bins).clone();
  counts[0] += ch.pending_zeros;
  return counts;
}

c10::optional<at::Tensor> HistogramCalibrator::compute_amax(const AmaxRequest& request) const {
  const AmaxRequest& r = request.method ? request : default_request_.value_or(request);
  MOPT_CHECK_TYPE(r.method.has_value(), "HistogramCalibrator.compute_amax needs a method: "
                  "'entropy', 'percentile' or 'mse' (e.g. quantizer.load_calib_amax('entropy'), "
                  "or calibrate with algorithm='entropy' / 'percentile' / 'histogram_mse')");
  return compute_amax(*r.method, r.options);
}

void HistogramCalibrator::set_default_method(HistogramMethod method,
                                             const HistogramAmaxOptions& options) {
  default_request_ = AmaxRequest{method, options};
}

std::shared_ptr<Calibrator> HistogramCalibrator::clone() const {
  auto c = std::make_shared<HistogramCalibrator>(*this);
  if (hist_.defined()) c->hist_ = hist_.clone();
  return c;
}

void HistogramCalibrator::all_reduce(const ProcessGroup& group) {
  if (group.size <= 1) return;
  const auto shape = calib::agree_on_shape(
      group, channels_.empty() ? std::nullopt : std::optional(amax_shape_));
  if (!shape) return;
  int64_t n = 1;
  for (int64_t d : *shape) n *= d;
  if (channels_.empty()) {
    amax_shape_ = *shape;
    channels_.resize(n);
  }
  MOPT_CHECK_STATE(channels() == n, "amax shape changed! (the processes collected ", n,
                   " and ", channels(), " histograms)");
  // Per channel, max-reduced: bins, grown, edge_end, upper, width, -width, non-finite code.
  constexpr int64_t kFields = 7;
  const double lowest = -std::numeric_limits<double>::infinity();
  at::Tensor meta = at::full({n, kFields}, lowest, at::kDouble);
  at::Tensor zeros = at::zeros({n}, at::kLong);
  auto* m = meta.data_ptr<double>();
  auto* z = zeros.data_ptr<int64_t>();
  for (int64_t c = 0; c < n; ++c) {
    const Channel& ch = channels_[c];
    double* row = m + c * kFields;
    row[6] = std::isnan(ch.nonfinite) ? 2.0 : (ch.nonfinite != 0.0f ? 1.0 : 0.0);
    z[c] = ch.pending_zeros;
    if (ch.bins == 0) continue;
    row[0] = static_cast<double>(ch.bins);
    row[1] = ch.grown ? 1.0 : 0.0;
    row[2] = ch.edge_end;
    row[3] = ch.upper;
    row[4] = ch.width;
    row[5] = -static_cast<double>(ch.width);
  }
  meta = group.all_reduce(meta, ReduceOp::kMax);
  zeros = group.all_reduce(zeros, ReduceOp::kSum);
  m = meta.data_ptr<double>();
  z = zeros.data_ptr<int64_t>();
  int64_t max_bins = 0;
  for (int64_t c = 0; c < n; ++c) {
    Channel& ch = channels_[c];
    const double* row = m + c * kFields;
    ch.pending_zeros = z[c];
    ch.nonfinite = row[6] == 2.0 ? std::numeric_limits<float>::quiet_NaN()
                                 : (row[6] == 1.0 ? std::numeric_limits<float>::infinity() : 0.f);
    if (row[0] == lowest) continue;  // no rank fixed this channel's bins
    MOPT_CHECK_STATE(row[4] == -row[5], "histogram calibration across processes: channel ", c,
                     " was binned with different widths (", -row[5], " and ", row[4], "); the "
                     "first batch of every process must reach this quantizer with data");
    ch.bins = static_cast<int64_t>(row[0]);
    ch.grown = row[1] > 0.0;
    ch.edge_end = static_cast<float>(row[2]);
    ch.upper = static_cast<float>(row[3]);
    ch.width = static_cast<float>(row[4]);
    max_bins = std::max(max_bins, ch.bins);
  }
  if (max_bins == 0) return;
  const auto device = hist_.defined() ? hist_.device() : at::Device(at::kCPU);
  at::Tensor h = hist_.defined() ? hist_ : at::zeros({n, max_bins}, at::kLong);
  if (h.size(1) < max_bins) h = at::constant_pad_nd(h, {0, max_bins - h.size(1)});
  hist_ = group.all_reduce(h, ReduceOp::kSum).to(device);
}

c10::optional<at::Tensor> HistogramCalibrator::compute_amax(
    HistogramMethod method, const HistogramAmaxOptions& options) const {
  if (channels_.empty()) return c10::nullopt;
  int64_t levels = 0;
  if (method == HistogramMethod::kEntropy) levels = entropy_levels(num_bits_, is_unsigned_);
  if (method == HistogramMethod::kPercentile) {
    MOPT_CHECK_VALUE(options.percentile >= 0.0 && options.percentile <= 100.0,
                     "Invalid percentile. Must be in range 0 <= percentile <= 100, got ",
                     options.percentile);
  }
  const at::Tensor hist_cpu = hist_.defined() ? hist_.to(at::kCPU) : at::Tensor();
  const int64_t n = channels();
  std::vector<float> amax(n, 0.0f);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Channel& ch = channels_[c];
      if (ch.nonfinite != 0.0f || std::isnan(ch.nonfinite)) {
        amax[c] = ch.nonfinite;
        continue;
      }
      if (ch.bins == 0) continue;  // only zeros so far
      HostHistogram h = host_histogram(channel_counts(c, hist_cpu), channel_edges(ch));
      switch (method) {
        case HistogramMethod::kEntropy:
          amax[c] = entropy_amax(std::move(h.counts), h.edges, levels, options.stride,
                                 options.start_bin);
          break;
        case HistogramMethod::kPercentile:
          amax[c] = percentile_amax(h.counts, h.edges, options.percentile);
          break;
        case HistogramMethod::kMse:
          amax[c] = mse_amax(h.counts, h.edges, num_bits_, is_unsigned_, options.stride,
                             options.start_bin);
          break;
      }
    }
  });
  at::Tensor out = at::tensor(amax, at::kFloat).reshape(amax_shape_);
  if (hist_.defined()) out = out.to(hist_.device());
  return out;
}

void HistogramCalibrator::reset() {
  channels_.clear();
  amax_shape_.clear();
  hist_ = at::Tensor();
}

at::Tensor HistogramCalibrator::histogram(int64_t channel) const {
  MOPT_CHECK_VALUE(channel >= 0 && channel < channels(), "channel ", channel,
                   " is out of range for a calibrator of ", channels(), " histograms");
  if (channels_[channel].bins == 0) return at::Tensor();
  return channel_counts(channel, hist_.to(at::kCPU));
}

at::Tensor HistogramCalibrator::bin_edges(int64_t channel) const {
  MOPT_CHECK_VALUE(channel >= 0 && channel < channels(), "channel ", channel,
                   " is out of range for a calibrator of ", channels(), " histograms");
  if (channels_[channel].bins == 0) return at::Tensor();
  return channel_edges(channels_[channel]);
}

}  // namespace mopt
