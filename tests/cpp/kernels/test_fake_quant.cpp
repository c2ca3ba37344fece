// CPU fake-quant kernels against the naive float64 references.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/dtype.h"
#include "common/layout.h"
#include "fake_quant/fake_quant.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using fake_quant::FakeQuantParams;

FakeQuantParams int_params(const float* x, float* y, const float* amax, ReduceLayout layout,
                           int bits, bool is_unsigned, bool narrow, bool full = false) {
  FakeQuantParams p;
  p.x = x;
  p.y = y;
  p.amax = amax;
  p.layout = layout;
  p.format = Format::kInt;
  p.num_bits = bits;
  p.is_unsigned = is_unsigned;
  p.narrow_range = narrow;
  p.full_range = full;
  return p;
}

ReduceLayout layout_for(std::vector<int64_t> shape, std::vector<bool> keep) {
  bool k[16];
  for (size_t i = 0; i < keep.size(); ++i) k[i] = keep[i];
  return make_reduce_layout(shape.data(), static_cast<int>(shape.size()), k);
}

// Index into a keepdims amax of an element of a contiguous tensor (the naive way).
int64_t naive_amax_index(const std::vector<int64_t>& shape, const std::vector<bool>& keep,
                         int64_t flat) {
  int64_t idx = 0, mult = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    const int64_t i = flat % shape[d];
    flat /= shape[d];
    if (keep[d]) {
      idx += i * mult;
      mult *= shape[d];
    }
  }
  return idx;
}

struct IntCase {
  int bits;
  bool is_unsigned;
  bool narrow;
  bool full = false;  // full_range
};

class IntFakeQuant : public ::testing::TestWithParam<IntCase> {};

TEST_P(IntFakeQuant, PerTensorMatchesReference) {
  const IntCase c = GetParam();
  auto x = test::random_values(10007, 1 + c.bits);
  if (c.is_unsigned) for (auto& v : x) v = std::fabs(v);
  const float amax = 2.5f;  // saturates the outliers
  std::vector<float> y(x.size());
  auto p = int_params(x.data(), y.data(), &amax, layout_for({10007}, {false}), c.bits,
                      c.is_unsigned, c.narrow, c.full);
  fake_quant::fake_quant_cpu(p);
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(y[i], static_cast<float>(test::ref_fake_quant_int(x[i], amax, c.bits, c.is_unsigned,
                                                                 c.narrow, c.full)))
        << "i=" << i << " x=" << x[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Bits, IntFakeQuant,
                         ::testing::Values(IntCase{8, false, false}, IntCase{8, false, true},
                                           IntCase{8, true, false}, IntCase{4, false, false},
                                           IntCase{4, false, true}, IntCase{2, false, false},
                                           IntCase{3, true, false}, IntCase{16, false, false},
                                           IntCase{16, true, false}, IntCase{12, false, true},
                                           IntCase{4, false, false, true},
                                           IntCase{8, false, false, true},
                                           IntCase{2, false, false, true}));

// Full range spreads all 2^b codes over [-amax, amax]: at 4 bits the codes -8..7 in steps of
// amax / 7.5, +amax clamping to 7 steps and -amax reaching -8 (a tie, rounded to even).
TEST(IntFakeQuant, FullRangeUsesEveryCode) {
  const float amax = 1.5f;
  std::vector<float> x(301), y(301);
  for (size_t i = 0; i < x.size(); ++i) x[i] = -amax + 2.0f * amax * static_cast<float>(i) / 300;
  auto p = int_params(x.data(), y.data(), &amax, layout_for({301}, {false}), 4, false, false,
                      true);
  fake_quant::fake_quant_cpu(p);
  std::vector<int> seen(16, 0);
  for (size_t i = 0; i < x.size(); ++i) {
    const double code = y[i] / (amax / 7.5);
    ASSERT_NEAR(code, std::nearbyint(code), 1e-4) << x[i];
    ASSERT_GE(code, -8.0 - 1e-4);
    ASSERT_LE(code, 7.0 + 1e-4);
    ++seen[static_cast<int>(std::nearbyint(code)) + 8];
  }
  for (int c = 0; c < 16; ++c) EXPECT_GT(seen[c], 0) << "code " << c - 8 << " never used";
  EXPECT_EQ(y.front(), -8.0f * (amax / 7.5f));
  EXPECT_FLOAT_EQ(y.back(), 7.0f * (amax / 7.5f));
  p.narrow_range = true;  // contradicts full range
  EXPECT_THROW(fake_quant::fake_quant_cpu(p), KernelError);
}

// Asymmetric: int_asym_range turns per-row [lo, hi] ranges into (amax, zero point), and the
// zero point shifts the codes: every row of a skewed ramp reaches all 16 codes, its ends map to
// -8 and 7, and 0 stays exact. Checked against a float64 rule written here.
TEST(IntFakeQuant, AsymmetricRangesUseEveryCodeAndKeepZero) {
  const int rows = 4, cols = 257;
  const float los[rows] = {-0.3f, 0.0f, -2.0f, -1.0f};
  const float his[rows] = {1.7f, 0.9f, 0.0f, 1.0f};
  std::vector<float> x(rows * cols), y(rows * cols), amax(rows), zp(rows), lo(rows), hi(rows);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < cols; ++i) {
      x[r * cols + i] = los[r] + (his[r] - los[r]) * static_cast<float>(i) / (cols - 1);
    }
    x[r * cols + 100] = 0.0f;
    lo[r] = *std::min_element(x.begin() + r * cols, x.begin() + (r + 1) * cols);
    hi[r] = *std::max_element(x.begin() + r * cols, x.begin() + (r + 1) * cols);
  }
  fake_quant::AsymRangeParams rp;
  rp.lo = lo.data();
  rp.hi = hi.data();
  rp.amax = amax.data();
  rp.zero_point = zp.data();
  rp.n = rows;
  rp.num_bits = 4;
  fake_quant::int_asym_range_cpu(rp);
  auto p = int_params(x.data(), y.data(), amax.data(), layout_for({rows, cols}, {true, false}), 4,
                      false, false, true);
  p.zero_point = zp.data();
  fake_quant::fake_quant_cpu(p);
  for (int r = 0; r < rows; ++r) {
    const double l = std::min<double>(lo[r], 0.0), h = std::max<double>(hi[r], 0.0);
    const double step = (h - l) / 15.0;
    const double z = std::clamp(std::nearbyint(-8.0 - l / step), -8.0, 7.0);
    EXPECT_NEAR(amax[r], (h - l) / 2, 1e-6) << r;
    EXPECT_EQ(zp[r], static_cast<float>(z)) << r;
    std::vector<int> seen(16, 0);
    for (int i = 0; i < cols; ++i) {
      const float v = x[r * cols + i];
      const double code = std::clamp(std::nearbyint(v / step) + z, -8.0, 7.0);
      const double got = y[r * cols + i] / step + z;  // the kernel's code
      const double frac = std::abs(v / step) - std::floor(std::abs(v / step));
      if (std::abs(frac - 0.5) < 1e-4) {  // a tie: fp32 and float64 may round either way
        ASSERT_LE(std::abs(got - code), 1.0 + 1e-4) << r << " " << i;
      } else {
        ASSERT_NEAR(got, code, 1e-4) << r << " " << i;
      }
      ++seen[static_cast<int>(std::nearbyint(got)) + 8];
    }
    for (int c = 0; c < 16; ++c) EXPECT_GT(seen[c], 0) << "row " << r << " code " << c - 8;
    EXPECT_EQ(y[r * cols + 100], 0.0f) << "zero must stay exact";
  }
  p.full_range = false;  // a zero point needs the full-range scaling of asymmetric formats
  EXPECT_THROW(fake_quant::fake_quant_cpu(p), KernelError);
}

TEST(IntFakeQuant, PerChannelAnyAxesMatchesReference) {
  const std::vector<int64_t> shape = {3, 5, 7, 4};
  const std::vector<std::vector<bool>> keeps = {
      {true, false, false, false}, {false, true, false, false}, {false, false, false, true},
      {true, false, true, false},  {false, true, false, true},  {true, true, true, true},
      {false, false, false, false}};
  const int64_t numel = 3 * 5 * 7 * 4;
  auto x = test::random_values(numel, 7);
  for (const auto& keep : keeps) {
    ReduceLayout l = layout_for(shape, keep);
    std::vector<float> amax(l.out_numel);
    for (size_t i = 0; i < amax.size(); ++i) amax[i] = 0.5f + 0.37f * static_cast<float>(i % 11);
    amax[0] = 0.0f;  // a zero-amax channel quantizes to zero
    std::vector<float> y(numel);
    fake_quant::fake_quant_cpu(int_params(x.data(), y.data(), amax.data(), l, 8, false, false));
    for (int64_t i = 0; i < numel; ++i) {
      const float a = amax[naive_amax_index(shape, keep, i)];
      ASSERT_EQ(y[i], static_cast<float>(test::ref_fake_quant_int(x[i], a, 8, false, false)))
          << "i=" << i;
    }
  }
}

TEST(IntFakeQuant, EdgeCases) {
  // Exact .5 ties round to even; amax below 2^-24 gives zeros; saturation at both ends.
  const float amax = 127.0f;  // scale 1
  std::vector<float> x = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, 300.0f, -300.0f, -127.5f};
  std::vector<float> expect = {0.0f, 2.0f, 2.0f, -0.0f, -2.0f, -2.0f, 126.0f, 127.0f, -128.0f,
                               -128.0f};
  std::vector<float> y(x.size());
  fake_quant::fake_quant_cpu(int_params(x.data(), y.data(), &amax,
                                        layout_for({(int64_t)x.size()}, {false}), 8, false, false));
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], expect[i]) << "x=" << x[i];

  const float tiny = 5.0e-8f;  // below 2^-24
  fake_quant::fake_quant_cpu(int_params(x.data(), y.data(), &tiny,
                                        layout_for({(int64_t)x.size()}, {false}), 8, false, false));
  for (float v : y) EXPECT_EQ(v, 0.0f);

  // One element, and NaN propagates.
  float one = std::nanf(""), out = 0.0f, a1 = 1.0f;
  fake_quant::fake_quant_cpu(int_params(&one, &out, &a1, layout_for({1}, {false}), 8, false, false));
  EXPECT_TRUE(std::isnan(out));
}

TEST(IntFakeQuant, HalfAndBFloat16StoreRoundedResult) {
  auto xf = test::random_values(4099, 3);
  std::vector<Half> xh(xf.size()), yh(xf.size());
  std::vector<BFloat16> xb(xf.size()), yb(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) {
    store_float(&xh[i], xf[i]);
    store_float(&xb[i], xf[i]);
  }
  const float amax = 3.0f;
  auto p = int_params(nullptr, nullptr, &amax, layout_for({4099}, {false}), 8, false, false);
  p.x = xh.data();
  p.y = yh.data();
  p.dtype = DType::kFloat16;
  fake_quant::fake_quant_cpu(p);
  p.x = xb.data();
  p.y = yb.data();
  p.dtype = DType::kBFloat16;
  fake_quant::fake_quant_cpu(p);
  for (size_t i = 0; i < xf.size(); ++i) {
    const double rh = test::ref_fake_quant_int(load_float(&xh[i]), amax, 8, false, false);
    const double rb = test::ref_fake_quant_int(load_float(&xb[i]), amax, 8, false, false);
    // The result is the fp32 value rounded once to the storage type.
    ASSERT_EQ(load_float(&yh[i]), static_cast<float>(test::ref_round_significand(rh, 10, -14)))
        << i;
    ASSERT_EQ(load_float(&yb[i]), static_cast<float>(test::ref_round_significand(rb, 7, -126)))
        << i;
  }
}

TEST(IntFakeQuant, UnsignedFlagsNegativeInput) {
  std::vector<float> x = {0.5f, -0.25f, 1.0f};
  std::vector<float> y(3);
  const float amax = 1.0f;
  int32_t neg = 0;
  auto p = int_params(x.data(), y.data(), &amax, layout_for({3}, {false}), 8, true, false);
  p.negative_found = &neg;
  fake_quant::fake_quant_cpu(p);
  EXPECT_EQ(neg, 1);
}

TEST(IntFakeQuant, RejectsBadBits) {
  float x = 1.0f, y = 0.0f, amax = 1.0f;
  auto p = int_params(&x, &y, &amax, layout_for({1}, {false}), 17, false, false);
  EXPECT_THROW(fake_quant::fake_quant_cpu(p), KernelError);
  p.num_bits = 1;
  EXPECT_THROW(fake_quant::fake_quant_cpu(p), KernelError);
}

struct MiniCase {
  int e, m;
};

class MinifloatFakeQuant : public ::testing::TestWithParam<MiniCase> {};

TEST_P(MinifloatFakeQuant, ScaledAndUnscaledMatchReference) {
  const MiniCase c = GetParam();
  const auto table = test::minifloat_values(c.e, c.m);
  auto x = test::random_values(20011, 11 + c.e);
  // Every representable value, the midpoints between neighbours (exact ties) and beyond max.
  for (size_t i = 0; i + 1 < table.size(); ++i) {
    x.push_back(static_cast<float>(table[i]));
    x.push_back(static_cast<float>((table[i] + table[i + 1]) / 2));
    x.push_back(-static_cast<float>((table[i] + table[i + 1]) / 2));
  }
  x.push_back(static_cast<float>(table.back() * 1.01));
  x.push_back(static_cast<float>(-table.back() * 4));
  x.push_back(1e-30f);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(n);
  FakeQuantParams p;
  p.x = x.data();
  p.y = y.data();
  p.layout = layout_for({n}, {false});
  p.format = Format::kMinifloat;
  p.exponent_bits = c.e;
  p.mantissa_bits = c.m;
  p.amax = nullptr;
  fake_quant::fake_quant_cpu(p);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(y[i], static_cast<float>(test::ref_fake_quant_minifloat(x[i], nullptr, table)))
        << "unscaled x=" << x[i];
  }
  const float amax = 3.7f;
  p.amax = &amax;
  fake_quant::fake_quant_cpu(p);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(y[i], static_cast<float>(test::ref_fake_quant_minifloat(x[i], &amax, table)))
        << "scaled x=" << x[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, MinifloatFakeQuant,
                         ::testing::Values(MiniCase{4, 3}, MiniCase{5, 2}, MiniCase{2, 1},
                                           MiniCase{3, 2}, MiniCase{2, 3}));

TEST(MinifloatFakeQuant, SaturatesAtFormatMax) {
  std::vector<float> x = {448.0f, 464.0f, 1000.0f, -1e30f, 60000.0f};
  std::vector<float> y(x.size());
  FakeQuantParams p;
  p.x = x.data();
  p.y = y.data();
  p.layout = layout_for({(int64_t)x.size()}, {false});
  p.format = Format::kMinifloat;
  p.exponent_bits = 4;
  p.mantissa_bits = 3;
  fake_quant::fake_quant_cpu(p);
  EXPECT_EQ(y[0], 448.0f);
  EXPECT_EQ(y[1], 448.0f);
  EXPECT_EQ(y[2], 448.0f);
  EXPECT_EQ(y[3], -448.0f);
  p.exponent_bits = 5;
  p.mantissa_bits = 2;
  fake_quant::fake_quant_cpu(p);
  EXPECT_EQ(y[4], 57344.0f);
  EXPECT_EQ(y[3], -57344.0f);
}

TEST(MinifloatFakeQuant, PerChannelZeroAmaxGivesZero) {
  const std::vector<int64_t> shape = {4, 6};
  auto x = test::random_values(24, 5);
  std::vector<float> amax = {1.0f, 0.0f, 2.0f, 1e-9f};
  std::vector<float> y(24);
  FakeQuantParams p;
  p.x = x.data();
  p.y = y.data();
  p.amax = amax.data();
  p.layout = layout_for(shape, {true, false});
  p.format = Format::kMinifloat;
  fake_quant::fake_quant_cpu(p);
  const auto table = test::minifloat_values(4, 3);
  for (int i = 0; i < 24; ++i) {
    EXPECT_EQ(y[i], static_cast<float>(test::ref_fake_quant_minifloat(x[i], &amax[i / 6], table)));
  }
  for (int i = 6; i < 12; ++i) EXPECT_EQ(y[i], 0.0f);
}

TEST(Layout, CoalescesRuns) {
  ReduceLayout l = layout_for({2, 3, 1, 4, 5}, {true, true, false, false, false});
  EXPECT_EQ(l.ndim, 2);
  EXPECT_EQ(l.sizes[0], 6);
  EXPECT_EQ(l.sizes[1], 20);
  EXPECT_EQ(l.out_numel, 6);
  l = layout_for({}, {});
  EXPECT_EQ(l.numel, 1);
  EXPECT_EQ(l.ndim, 1);
}

}  // namespace
}  // namespace mopt::kernels
