// CPU histogram kernel against a naive per-element loop, for every layout the calibrator uses:
// per tensor, channel-major and channel-last per-channel views, edge values, every dtype and the
// parallel split paths.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "histogram/histogram.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using histogram::HistogramParams;

// The binning rule the calibrator promises (torch.histc's): position = fp32(fp32(a * bins) /
// upper), floored, a == upper in the last bin, NaN / a > upper / skipped zeros not counted.
int64_t naive_bin(double a, int64_t bins, float upper, bool skip_zeros) {
  if (std::isnan(a) || a > upper || (skip_zeros && a == 0.0)) return -1;
  const float prod = static_cast<float>(a) * static_cast<float>(bins);
  const float q = prod / upper;
  const int64_t b = static_cast<int64_t>(std::floor(static_cast<double>(q)));
  return std::min(b, bins - 1);
}

struct Case {
  int64_t channels, length, channel_stride, element_stride;
  std::vector<float> upper;
  std::vector<int64_t> bins;
  int64_t max_bins;
  bool skip_zeros = false;
};

// x holds the values already rounded to the storage type.
std::vector<int64_t> naive_histogram(const std::vector<double>& x, const Case& c) {
  std::vector<int64_t> h(c.channels * c.max_bins, 0);
  for (int64_t ch = 0; ch < c.channels; ++ch) {
    const int64_t bins = std::min(c.bins[ch], c.max_bins);
    if (bins <= 0 || !(c.upper[ch] > 0.0f)) continue;
    for (int64_t n = 0; n < c.length; ++n) {
      const double a = std::fabs(x[ch * c.channel_stride + n * c.element_stride]);
      const int64_t b = naive_bin(a, bins, c.upper[ch], c.skip_zeros);
      if (b >= 0) ++h[ch * c.max_bins + b];
    }
  }
  return h;
}

template <typename T>
DType dtype_of() {
  if (std::is_same_v<T, float>) return DType::kFloat32;
  if (std::is_same_v<T, Half>) return DType::kFloat16;
  return DType::kBFloat16;
}

template <typename T>
void check_case(const Case& c, std::vector<float> values) {
  std::vector<T> x(values.size());
  std::vector<double> stored(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    store_float(&x[i], values[i]);
    stored[i] = load_float(&x[i]);
  }
  HistogramParams p;
  p.x = x.data();
  p.dtype = dtype_of<T>();
  p.channels = c.channels;
  p.length = c.length;
  p.channel_stride = c.channel_stride;
  p.element_stride = c.element_stride;
  p.upper = c.upper.data();
  p.bins = c.bins.data();
  p.max_bins = c.max_bins;
  p.skip_zeros = c.skip_zeros;
  std::vector<int64_t> out(c.channels * c.max_bins, -7);
  p.hist = out.data();
  histogram::histogram_cpu(p);
  const auto ref = naive_histogram(stored, c);
  ASSERT_EQ(out.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(out[i], ref[i]) << "channel " << i / c.max_bins << " bin " << i % c.max_bins;
  }
}

float max_abs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

template <typename T>
void per_tensor_cases() {
  for (int64_t n : {int64_t{1}, int64_t{255}, int64_t{257}, int64_t{100003}}) {
    auto v = test::random_values(n, 11 + static_cast<uint32_t>(n));
    // The upper edge is the stored max, as the calibrator passes it.
    T t;
    store_float(&t, max_abs(v));
    const float upper = load_float(&t);
    Case c{1, n, 0, 1, {upper}, {2048}, 2048};
    check_case<T>(c, v);
    c.skip_zeros = true;
    for (size_t i = 0; i < v.size(); i += 3) v[i] = 0.0f;
    check_case<T>(c, v);
  }
}

TEST(Histogram, PerTensorFloat32) { per_tensor_cases<float>(); }
TEST(Histogram, PerTensorFloat16) { per_tensor_cases<Half>(); }
TEST(Histogram, PerTensorBFloat16) { per_tensor_cases<BFloat16>(); }

TEST(Histogram, EdgeValues) {
  const float upper = 3.0f;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> v = {0.0f, -0.0f, 3.0f, -3.0f, 3.0000002f, nan, inf, -inf,
                          1.5f, 2.9999998f, 1e-30f, -1.0f};
  Case c{1, static_cast<int64_t>(v.size()), 0, 1, {upper}, {7}, 7};
  check_case<float>(c, v);
  // Spot checks of the rule itself: upper goes to the last bin, above upper and NaN nowhere.
  std::vector<int64_t> out(7);
  HistogramParams p;
  p.x = v.data();
  p.length = static_cast<int64_t>(v.size());
  p.upper = c.upper.data();
  p.bins = c.bins.data();
  p.max_bins = 7;
  p.hist = out.data();
  histogram::histogram_cpu(p);
  int64_t total = 0;
  for (auto h : out) total += h;
  EXPECT_EQ(total, 8);   // all but 3.0000002, NaN and the two infinities
  EXPECT_EQ(out[6], 3);  // 3, -3 and 2.9999998
  EXPECT_EQ(out[0], 3);  // 0, -0 and 1e-30
}

TEST(Histogram, PerChannelChannelMajorAndChannelLast) {
  const int64_t channels = 37, length = 1001;
  auto v = test::random_values(channels * length, 5);
  std::vector<float> upper(channels);
  std::vector<int64_t> bins(channels);
  for (int64_t c = 0; c < channels; ++c) {
    upper[c] = 0.5f + 0.25f * static_cast<float>(c % 9);  // some values lie above
    bins[c] = 64 + 13 * (c % 5);
  }
  bins[3] = 0;        // a channel without bins counts nothing
  upper[4] = 0.0f;    // nor does one without a range
  bins[5] = 1 << 20;  // more bins than max_bins: clamped
  // [C, N] contiguous rows and the same values read as an [N, C] channel-last tensor.
  check_case<float>(Case{channels, length, length, 1, upper, bins, 200}, v);
  check_case<float>(Case{channels, length, 1, channels, upper, bins, 200}, v);
  check_case<BFloat16>(Case{channels, length, 1, channels, upper, bins, 200}, v);
  // A strided view of channel-major rows (every other element of each row).
  check_case<float>(Case{channels, length / 2, length, 2, upper, bins, 200}, v);
}

TEST(Histogram, ParallelSplitsAgreeWithNaive) {
  // One huge channel (split across threads with atomic merges), a few channels, many channels.
  const int64_t length = 1 << 18;
  auto v = test::random_values(4 * length, 9);
  const float upper = max_abs(v);
  check_case<float>(Case{1, 4 * length, 0, 1, {upper}, {2048}, 2048}, v);
  check_case<float>(Case{4, length, length, 1, {upper, upper, upper, upper},
                         {2048, 1000, 3, 2048}, 2048}, v);
  check_case<float>(Case{4, length, 1, 4, {upper, upper, upper, upper}, {2048, 1000, 3, 2048},
                         2048}, v);
  const int64_t many = 1024;
  std::vector<float> up(many, upper / 2);
  std::vector<int64_t> bins(many, 100);
  check_case<float>(Case{many, 4 * length / many, 4 * length / many, 1, up, bins, 100}, v);
  check_case<float>(Case{many, 4 * length / many, 1, many, up, bins, 100}, v);  // channel-last
}

TEST(Histogram, ThreadFallbackMatchesSerial) {
  // The torch-free build runs on the std::thread fallback: force a serial run and compare.
  auto v = test::random_values(300000, 21);
  const float upper = max_abs(v);
  std::vector<int64_t> serial(512), parallel(512);
  std::vector<float> up = {upper};
  std::vector<int64_t> bins = {512};
  HistogramParams p;
  p.x = v.data();
  p.length = static_cast<int64_t>(v.size());
  p.upper = up.data();
  p.bins = bins.data();
  p.max_bins = 512;
  p.hist = parallel.data();
  histogram::histogram_cpu(p);
  set_parallel_backend(
      [](int64_t b, int64_t e, int64_t, void* ctx, RangeBody body) { body(ctx, b, e); },
      [] { return 1; });
  p.hist = serial.data();
  histogram::histogram_cpu(p);
  set_parallel_backend(nullptr, nullptr);
  EXPECT_EQ(serial, parallel);
}

TEST(Histogram, BadParamsThrow) {
  std::vector<float> v(4, 1.0f), up = {1.0f};
  std::vector<int64_t> bins = {4}, out(4);
  HistogramParams p;
  p.x = v.data();
  p.length = 4;
  p.upper = up.data();
  p.bins = bins.data();
  p.hist = out.data();
  p.max_bins = 0;
  EXPECT_THROW(histogram::histogram_cpu(p), KernelError);
  p.max_bins = histogram::kMaxHistogramBins + 1;
  EXPECT_THROW(histogram::histogram_cpu(p), KernelError);
  p.max_bins = 4;
  p.hist = nullptr;
  EXPECT_THROW(histogram::histogram_cpu(p), KernelError);
}

}  // namespace
}  // namespace mopt::kernels
