// Histogram and MSE calibrators in C++: the histogram op against torch.histc, bin growth against
// the reference's formulation in plain ATen, and the three amax searches against naive float64
// implementations of the published algorithms written here (sharing no code with the library).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "mopt/calib/histogram_calibrator.h"
#include "mopt/calib/mse_calibrator.h"
#include "mopt/quant/fake_quant.h"

namespace mopt {
namespace {

std::vector<double> to_vec(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous();
  return {d.data_ptr<double>(), d.data_ptr<double>() + d.numel()};
}

// Entropy calibration as published (TensorRT / pytorch-quantization): for every candidate i the
// reference is bins[:i] with the outliers added to the last bin, the candidate merges bins[:i]
// into 2^(b-1) groups (group of bin j = digitize(j, linspace(0, i, levels + 1)) - 1), spreads each
// group's mass evenly over its non-empty bins; KL of the normalized pair; the last minimum wins.
double naive_entropy(std::vector<double> h, const std::vector<double>& edges, int levels,
                     int stride, int start_bin) {
  h[0] = h[1];
  const int n = static_cast<int>(h.size());
  double total = 0.0;
  for (double v : h) total += v;
  double best = std::numeric_limits<double>::infinity();
  int best_i = -1;
  for (int i = start_bin; i <= n; i += stride) {
    std::vector<int> group(i);
    for (int j = 0; j < i; ++j) {
      int g = -1;
      for (int k = 0; k <= levels; ++k) {
        if (static_cast<double>(k) * i / levels <= j) g = k;
      }
      group[j] = g;
    }
    std::vector<double> gsum(levels, 0.0), gcnt(levels, 0.0);
    for (int j = 0; j < i; ++j) {
      if (h[j] != 0.0) {
        gsum[group[j]] += h[j];
        gcnt[group[j]] += 1.0;
      }
    }
    std::vector<double> p(h.begin(), h.begin() + i), q(i, 0.0);
    for (int j = i; j < n; ++j) p[i - 1] += h[j];
    for (int j = 0; j < i; ++j) q[j] = h[j] != 0.0 ? gsum[group[j]] / gcnt[group[j]] : 0.0;
    double ps = 0.0, qs = 0.0;
    for (int j = 0; j < i; ++j) {
      ps += p[j];
      qs += q[j];
    }
    double kl = 0.0;
    for (int j = 0; j < i; ++j) {
      const double pj = p[j] / ps, qj = q[j] / qs;
      if (pj > 0.0) {
        kl += qj > 0.0 ? pj * std::log(pj / qj) : std::numeric_limits<double>::infinity();
      }
    }
    if (kl <= best) {
      best = kl;
      best_i = i;
    }
  }
  return edges[best_i];
}

double naive_percentile(const std::vector<double>& h, const std::vector<double>& edges,
                        double pct) {
  double total = 0.0;
  for (double v : h) total += v;
  double cdf = 0.0;
  for (size_t j = 0; j < h.size(); ++j) {
    cdf += h[j] / total;
    if (cdf >= pct / 100.0) return edges[j];
  }
  return edges[h.size()];
}

double naive_int_quant(double x, double amax, int bits) {
  const double maxbound = std::ldexp(1.0, bits - 1) - 1.0;
  const float scale = static_cast<float>(maxbound) / static_cast<float>(amax);
  const double q = std::min(std::nearbyint(static_cast<double>(static_cast<float>(x) * scale)),
                            maxbound);
  return static_cast<float>(q) / scale;
}

double naive_mse(const std::vector<double>& h, const std::vector<double>& edges, int bits,
                 int stride, int start_bin) {
  std::vector<double> centers(h.size());
  for (size_t j = 0; j < h.size(); ++j) {
    centers[j] = static_cast<float>((static_cast<float>(edges[j + 1]) +
                                     static_cast<float>(edges[j])) / 2.0f);
  }
  double best = std::numeric_limits<double>::infinity(), best_c = 0.0;
  for (size_t i = start_bin; i < h.size(); i += stride) {
    double err = 0.0;
    for (size_t j = 0; j < h.size(); ++j) {
      const double d = naive_int_quant(centers[j], centers[i], bits) - centers[j];
      err += h[j] * d * d;
    }
    if (err < best) {
      best = err;
      best_c = centers[i];
    }
  }
  return best_c;
}

// Heavy-tailed activations (what entropy calibration is for), seeded.
at::Tensor activations(int64_t rows, int64_t cols, int64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({rows, cols});
  return x * at::exp(at::randn({rows, cols}) * 0.75);
}

TEST(HistogramAbs, MatchesHistc) {
  const at::Tensor x = activations(64, 97, 0);
  const at::Tensor a = x.abs();
  const float m = a.max().item<float>();
  const at::Tensor h = histogram_abs(x, {}, at::full({1}, m), at::full({1}, 2048, at::kLong), 2048);
  EXPECT_TRUE(at::equal(h[0], at::histc(a, 2048, 0, m).to(at::kLong)));
  // Per channel (axis 1, the channel-last layout): each column against histc of that column.
  const at::Tensor up = a.amax({0});
  const at::Tensor hc = histogram_abs(x, {1}, up, at::full({97}, 300, at::kLong), 300);
  for (int64_t c = 0; c < 97; c += 12) {
    EXPECT_TRUE(at::equal(hc[c], at::histc(a.select(1, c), 300, 0, up[c].item<double>())
                                     .to(at::kLong)));
  }
}

TEST(HistogramAbs, BadArguments) {
  const at::Tensor x = at::randn({4, 5});
  const at::Tensor up = at::ones({1}), bins = at::full({1}, 8, at::kLong);
  EXPECT_THROW(histogram_abs(x, {}, up, bins, 0), c10::ValueError);
  EXPECT_THROW(histogram_abs(x, {0}, up, bins, 8), c10::ValueError);  // 4 channels, 1 upper
  EXPECT_THROW(histogram_abs(x, {}, up, bins.to(at::kFloat), 8), c10::TypeError);
  EXPECT_THROW(histogram_abs(x.to(at::kInt), {}, up, bins, 8), c10::TypeError);
  EXPECT_THROW(histogram_abs(x, {2}, up, bins, 8), c10::ValueError);
}

// The reference calibrator's torch_hist collection, in plain ATen.
struct ReferenceCollector {
  at::Tensor hist, edges;
  int64_t num_bins;
  void collect(const at::Tensor& x_in) {
    const at::Tensor x = x_in.abs().to(at::kFloat);
    const at::Tensor m = x.max();
    if (!hist.defined()) {
      hist = at::histc(x, num_bins, 0, m.item<double>());
      edges = at::linspace(0, m.item<double>(), num_bins + 1, at::kFloat);
      return;
    }
    if (m.item<float>() > edges[-1].item<float>()) {
      const at::Tensor width = edges[1] - edges[0];
      num_bins = static_cast<int64_t>((m / width).ceil().item<float>());
      edges = at::arange(0, (m + width).item<double>(), width.item<double>(), at::kFloat);
    }
    at::Tensor h = at::histc(x, num_bins, 0, edges[-1].item<double>());
    h.narrow(0, 0, hist.numel()).add_(hist);
    hist = h;
  }
};

TEST(HistogramCalibrator, BinGrowthMatchesReferenceCollection) {
  HistogramCalibrator cal;
  ReferenceCollector ref{at::Tensor(), at::Tensor(), 2048};
  for (int64_t b = 0; b < 4; ++b) {
    const at::Tensor x = activations(32, 64, 10 + b) * (1.0 + 0.4 * b);  // max grows
    cal.collect(x);
    ref.collect(x);
  }
  EXPECT_GT(cal.histogram().numel(), 2048);
  EXPECT_TRUE(at::equal(cal.histogram(), ref.hist.to(at::kLong)));
  EXPECT_TRUE(at::equal(cal.bin_edges(), ref.edges));
}

TEST(HistogramCalibrator, AmaxMatchesNaiveAlgorithms) {
  HistogramCalibrator cal(NumBits::integer(8), std::nullopt, false, 512);
  for (int64_t b = 0; b < 3; ++b) cal.collect(activations(64, 48, 20 + b));
  const auto h = to_vec(cal.histogram());
  const auto e = to_vec(cal.bin_edges());
  HistogramAmaxOptions opt;
  opt.start_bin = 64;
  opt.stride = 3;
  EXPECT_EQ(cal.compute_amax(HistogramMethod::kEntropy, opt)->item<double>(),
            naive_entropy(h, e, 128, 3, 64));
  opt.stride = 1;
  EXPECT_EQ(cal.compute_amax(HistogramMethod::kEntropy, opt)->item<double>(),
            naive_entropy(h, e, 128, 1, 64));
  for (double pct : {50.0, 99.0, 99.99, 100.0}) {
    opt.percentile = pct;
    EXPECT_EQ(cal.compute_amax(HistogramMethod::kPercentile, opt)->item<double>(),
              naive_percentile(h, e, pct));
  }
  EXPECT_EQ(cal.compute_amax(HistogramMethod::kMse, opt)->item<double>(),
            naive_mse(h, e, 8, 1, 64));
  // 4-bit entropy: fewer levels than candidate bins, groups of several bins.
  EXPECT_EQ(histogram_amax_entropy(cal.histogram(), cal.bin_edges(), 4, false, 1, 16),
            naive_entropy(h, e, 8, 1, 16));
}

TEST(HistogramCalibrator, EntropyZeroSpikeAndTies) {
  // ReLU outputs: half the values are exact zeros, so the published bins[0] = bins[1] rule
  // decides the result.
  HistogramCalibrator cal(NumBits::integer(8), std::nullopt, false, 512);
  for (int64_t b = 0; b < 3; ++b) cal.collect(at::relu(activations(64, 48, 50 + b)));
  HistogramAmaxOptions opt;
  opt.start_bin = 64;
  EXPECT_EQ(cal.compute_amax(HistogramMethod::kEntropy, opt)->item<double>(),
            naive_entropy(to_vec(cal.histogram()), to_vec(cal.bin_edges()), 128, 1, 64));
  // No mass beyond bin 150 and more levels than bins: every candidate from 150 on reproduces
  // the histogram exactly (KL 0); the tie goes to the largest amax.
  at::manual_seed(3);
  at::Tensor counts = at::randint(1, 1000, {200}, at::kLong);
  counts.narrow(0, 150, 50).zero_();
  const at::Tensor edges = at::linspace(0, 1, 201, at::kFloat);
  EXPECT_EQ(histogram_amax_entropy(counts, edges, 8, /*is_unsigned=*/true, 1, 100), 1.0f);
  EXPECT_EQ(naive_entropy(to_vec(counts), to_vec(edges), 256, 1, 100), 1.0);
}

TEST(HistogramCalibrator, PerChannelEqualsPerSliceCalibrators) {
  const at::Tensor x = activations(40, 6, 30);
  HistogramCalibrator per_channel(NumBits::integer(8), std::vector<int64_t>{1}, false, 256);
  per_channel.collect(x);
  per_channel.collect(x * 1.5);
  const at::Tensor amax = *per_channel.compute_amax(HistogramMethod::kPercentile, {1, 8, 99.0});
  ASSERT_EQ(amax.sizes(), (at::IntArrayRef{1, 6}));
  for (int64_t c = 0; c < 6; ++c) {
    HistogramCalibrator single(NumBits::integer(8), std::nullopt, false, 256);
    single.collect(x.select(1, c));
    single.collect(x.select(1, c) * 1.5);
    EXPECT_EQ(amax[0][c].item<float>(),
              single.compute_amax(HistogramMethod::kPercentile, {1, 8, 99.0})->item<float>());
    EXPECT_TRUE(at::equal(per_channel.histogram(c), single.histogram()));
  }
}

TEST(HistogramCalibrator, ZerosFirstAndNonFinite) {
  HistogramCalibrator cal(NumBits::integer(8), std::nullopt, false, 16);
  EXPECT_FALSE(cal.compute_amax(HistogramMethod::kPercentile).has_value());
  cal.collect(at::zeros({10}));
  EXPECT_EQ(cal.compute_amax(HistogramMethod::kPercentile)->item<float>(), 0.0f);
  cal.collect(at::arange(1, 17, at::kFloat));
  const at::Tensor h = cal.histogram();
  EXPECT_EQ(h[0].item<int64_t>(), 10);  // the zeros seen before the range was known
  EXPECT_EQ(h.sum().item<int64_t>(), 26);
  cal.collect(at::tensor({1.0f, std::numeric_limits<float>::quiet_NaN()}));
  EXPECT_TRUE(std::isnan(cal.compute_amax(HistogramMethod::kEntropy, {1, 1, 99.0})->item<float>()));
  cal.reset();
  EXPECT_FALSE(cal.compute_amax(HistogramMethod::kEntropy).has_value());
}

TEST(HistogramCalibrator, BadArguments) {
  EXPECT_THROW(HistogramCalibrator(NumBits::integer(8), std::nullopt, false, 0), c10::ValueError);
  EXPECT_THROW(parse_histogram_method("kl"), c10::TypeError);
  HistogramCalibrator cal(NumBits::integer(8), std::vector<int64_t>{0}, false, 64);
  cal.collect(at::randn({3, 100}));
  EXPECT_THROW(cal.collect(at::randn({4, 100})), c10::Error);  // amax shape changed
  EXPECT_THROW(cal.compute_amax(HistogramMethod::kPercentile, {1, 128, 101.0}), c10::ValueError);
  EXPECT_THROW(cal.compute_amax(HistogramMethod::kEntropy, {1, 128, 99.0}), c10::ValueError);
  EXPECT_THROW(cal.compute_amax(HistogramMethod::kEntropy, {0, 8, 99.0}), c10::ValueError);
  HistogramCalibrator huge(NumBits::integer(8), std::vector<int64_t>{0}, false, 1 << 20);
  EXPECT_THROW(huge.collect(at::randn({1000, 2})), c10::ValueError);  // 2^30 counters
  HistogramCalibrator fp8(NumBits::minifloat(4, 3), std::nullopt, false, 64);
  fp8.collect(at::randn({100}));
  EXPECT_THROW(fp8.compute_amax(HistogramMethod::kEntropy, {1, 8, 99.0}), c10::NotImplementedError);
  EXPECT_GT(fp8.compute_amax(HistogramMethod::kMse, {1, 8, 99.0})->item<float>(), 0.0f);
}

TEST(MseCalibrator, PerChannelMatchesNaiveSearch) {
  const at::Tensor w = activations(8, 50, 40);
  const at::Tensor amax = w.abs().amax({1}, true);
  auto quant = [](const at::Tensor& x, const at::Tensor& a) { return fake_quant_int(x, a, 4); };
  MseCalibrator cal(amax, std::vector<int64_t>{0}, 7, 0.5, 1.25, quant);
  EXPECT_FALSE(cal.compute_amax().has_value());
  cal.collect(w);
  cal.collect(w * 0.5);
  const at::Tensor got = *cal.compute_amax();
  // Naive: per row, every multiplier, the summed squared error of both batches in float64.
  for (int64_t r = 0; r < 8; ++r) {
    double best = std::numeric_limits<double>::infinity(), best_m = 0.0;
    for (int s = 0; s < 7; ++s) {
      const double mult = at::linspace(0.5, 1.25, 7)[s].item<double>();
      const float a = amax[r][0].item<float>() * static_cast<float>(mult);
      double err = 0.0;
      for (double scale : {1.0, 0.5}) {
        for (int64_t j = 0; j < 50; ++j) {
          const double x = static_cast<float>(w[r][j].item<float>() * scale);
          const double maxbound = 7.0;
          const float sc = static_cast<float>(maxbound) / a;
          const double q = std::min(std::max(std::nearbyint(static_cast<double>(
                                                 static_cast<float>(x) * sc)), -8.0), maxbound);
          const double d = static_cast<double>(static_cast<float>(q) / sc) - x;
          err += d * d;
        }
      }
      if (err < best) {
        best = err;
        best_m = mult;
      }
    }
    EXPECT_FLOAT_EQ(got[r][0].item<float>(), amax[r][0].item<float>() * static_cast<float>(best_m));
  }
}

TEST(MseCalibrator, Errors) {
  MseCalibrator no_func(at::ones({}));
  EXPECT_THROW(no_func.collect(at::randn({4})), c10::Error);
  EXPECT_THROW(MseCalibrator(at::ones({}), std::nullopt, 0), c10::ValueError);
  EXPECT_THROW(MseCalibrator(at::ones({}), std::nullopt, 10, 2.0, 1.0), c10::ValueError);
  EXPECT_THROW(MseCalibrator(at::full({}, std::nan(""))), c10::ValueError);
  auto quant = [](const at::Tensor& x, const at::Tensor& a) { return fake_quant_int(x, a, 8); };
  MseCalibrator cal(at::ones({3, 1}), std::vector<int64_t>{0}, 10, 0.25, 4.0, quant);
  EXPECT_THROW(cal.collect(at::randn({4, 5})), c10::ValueError);  // 4 channels, amax has 3
}

}  // namespace
}  // namespace mopt
