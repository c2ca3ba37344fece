// CPU block-format kernels (NVFP4, MX, NF4) against the naive references of block_reference.h,
// plus golden vectors written from SPEC §5.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "block_quant/block_quant.h"
#include "block_reference.h"
#include "common/cpu_isa.h"
#include "common/dtype.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using block_quant::BlockQuantParams;

template <typename T>
constexpr DType dtype_of() {
  return std::is_same_v<T, float>  ? DType::kFloat32
         : std::is_same_v<T, Half> ? DType::kFloat16
                                   : DType::kBFloat16;
}

// What storing a float64 result into T gives (independent of the kernels' conversions).
template <typename T>
double ref_storage(double v) {
  if (std::is_same_v<T, float> || std::isnan(v)) return static_cast<float>(v);
  const double r = std::is_same_v<T, Half> ? test::ref_round_significand(v, 10, -14)
                                           : test::ref_round_significand(v, 7, -126);
  return r;
}

// Random inputs stored as T, and the float values the kernel actually reads.
template <typename T>
std::vector<T> to_storage(const std::vector<float>& xf, std::vector<float>* read_back) {
  std::vector<T> x(xf.size());
  read_back->resize(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) {
    store_float(&x[i], xf[i]);
    (*read_back)[i] = load_float(&x[i]);
  }
  return x;
}

template <typename T>
std::vector<float> as_float(const std::vector<T>& y) {
  std::vector<float> out(y.size());
  for (size_t i = 0; i < y.size(); ++i) out[i] = load_float(&y[i]);
  return out;
}

BlockQuantParams params(Format format, DType dtype, const void* x, void* y, int64_t rows,
                        int64_t row_len, int64_t block) {
  BlockQuantParams p;
  p.format = format;
  p.dtype = dtype;
  p.x = x;
  p.y = y;
  p.rows = rows;
  p.row_len = row_len;
  p.block_size = block;
  return p;
}

// Runs `ref_block(values, n, block_index)` over every block of a [rows, row_len] tensor.
template <typename F>
std::vector<double> reference_blocks(const std::vector<float>& x, int64_t rows, int64_t row_len,
                                     int64_t block, F ref_block) {
  std::vector<double> y(x.size());
  const int64_t nb = (row_len + block - 1) / block;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t start = r * row_len + j * block;
      const int64_t n = std::min(block, row_len - j * block);
      const auto yb = ref_block(x.data() + start, n, r * nb + j);
      for (int64_t i = 0; i < n; ++i) y[start + i] = yb[i];
    }
  }
  return y;
}

template <typename T>
void expect_matches(const std::vector<T>& y, const std::vector<double>& ref, const char* what) {
  for (size_t i = 0; i < y.size(); ++i) {
    const double want = ref_storage<T>(ref[i]);
    const float got = load_float(&y[i]);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << what << " i=" << i;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << what << " i=" << i;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NVFP4

template <typename T>
void check_nvfp4(int64_t rows, int64_t row_len, int64_t block, float amax_factor, uint32_t seed,
                 bool static_amax) {
  std::vector<float> xf;
  const auto x = to_storage<T>(test::random_values(rows * row_len, seed), &xf);
  float global = 0.0f;
  for (float v : xf) global = std::max(global, std::fabs(v));
  global *= amax_factor;  // < 1: a calibrated amax smaller than this input (saturation)
  std::vector<T> y(x.size());
  auto p = params(Format::kNVFP4, dtype_of<T>(), x.data(), y.data(), rows, row_len, block);
  p.global_amax = &global;
  const int64_t nb = (row_len + block - 1) / block;
  std::vector<float> block_amax(rows * nb);
  for (size_t i = 0; i < block_amax.size(); ++i) block_amax[i] = 0.05f + 0.1f * (i % 13);
  if (static_amax) p.block_amax = block_amax.data();
  block_quant::block_quant_cpu(p);
  const auto ref =
      reference_blocks(xf, rows, row_len, block, [&](const float* b, int64_t n, int64_t k) {
        const double bamax = static_amax ? block_amax[k] : test::ref_block_amax(b, n);
        return test::ref_nvfp4_block(b, n, global, bamax);
      });
  expect_matches(y, ref, "nvfp4");
}

TEST(BlockQuantNVFP4, MatchesReferenceFloat) {
  check_nvfp4<float>(64, 256, 16, 1.0f, 1, false);
  check_nvfp4<float>(33, 100, 16, 1.0f, 2, false);  // partial blocks at each row end
  check_nvfp4<float>(17, 96, 32, 0.3f, 3, false);   // calibrated amax below the input's
  check_nvfp4<float>(5, 1000, 16, 1.0f, 4, true);   // static block amax
  check_nvfp4<float>(3, 7, 16, 1.0f, 5, false);     // rows shorter than a block
}

TEST(BlockQuantNVFP4, MatchesReference16Bit) {
  check_nvfp4<Half>(40, 160, 16, 1.0f, 6, false);
  check_nvfp4<BFloat16>(40, 150, 16, 1.0f, 7, false);
  check_nvfp4<BFloat16>(9, 64, 16, 0.5f, 8, true);
}

// global amax 6 * 448 makes s2 = 1 and a block amax of 6 makes s1 = 1: the output is the E2M1
// rounding itself.
std::vector<float> nvfp4_unit_scale(std::vector<float> block) {
  const float global = 2688.0f;
  std::vector<float> y(block.size());
  auto p = params(Format::kNVFP4, DType::kFloat32, block.data(), y.data(), 1,
                  static_cast<int64_t>(block.size()), static_cast<int64_t>(block.size()));
  p.global_amax = &global;
  block_quant::block_quant_cpu(p);
  return y;
}

TEST(BlockQuantNVFP4, GoldenE2M1TableTiesAndSign) {
  // Every E2M1 value survives, with either sign.
  EXPECT_EQ(
      nvfp4_unit_scale({0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.5f, -1, -1.5f, -2, -3, -4, -6, 0}),
      (std::vector<float>{0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.5f, -1, -1.5f, -2, -3, -4, -6, 0}));
  // The SPEC thresholds: ties go to the even code (<=0.25 -> 0, <0.75 -> 0.5, <=1.25 -> 1,
  // <1.75 -> 1.5, <=2.5 -> 2, <3.5 -> 3, <=5 -> 4).
  EXPECT_EQ(nvfp4_unit_scale({0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f}),
            (std::vector<float>{0, 1, 1, 2, 2, 4, 4, 6}));
  EXPECT_EQ(nvfp4_unit_scale({-0.25f, -0.75f, -1.25f, -1.75f, -2.5f, -3.5f, -5.0f, -6.0f}),
            (std::vector<float>{-0.0f, -1, -1, -2, -2, -4, -4, -6}));
  const float up = 1.0f + std::ldexp(1.0f, -20);
  EXPECT_EQ(nvfp4_unit_scale({0.25f * up, 0.75f / up, 1.25f * up, 1.75f / up, 2.5f * up, 3.5f / up,
                              5.0f * up, 6.0f}),
            (std::vector<float>{0.5f, 0.5f, 1.5f, 1.5f, 3, 3, 6, 6}));
}

TEST(BlockQuantNVFP4, GoldenScaleSaturationAndZeroBlocks) {
  // s2 = 1: a block amax of 6000 asks for s1 = 1000, saturates to 448, and the largest value
  // saturates at 6 * 448.
  const float global = 2688.0f;
  std::vector<float> x = {6000.0f, 448.0f, -896.0f, 0.0f};
  std::vector<float> zeros(16, 0.0f);
  x.insert(x.end(), 12, 1.0f);
  x.insert(x.end(), zeros.begin(), zeros.end());
  std::vector<float> y(x.size());
  auto p = params(Format::kNVFP4, DType::kFloat32, x.data(), y.data(), 1, 32, 16);
  p.global_amax = &global;
  block_quant::block_quant_cpu(p);
  EXPECT_EQ(y[0], 2688.0f);
  EXPECT_EQ(y[1], 448.0f);
  EXPECT_EQ(y[2], -896.0f);
  EXPECT_EQ(y[4], 0.0f);  // 1 / 448 rounds to 0 in E2M1
  for (int i = 16; i < 32; ++i) EXPECT_EQ(y[i], 0.0f);
}

TEST(BlockQuantNVFP4, NaNAndUnusableAmax) {
  // A NaN element stays NaN and its block falls back to scale 1.
  std::vector<float> x(16, 0.7f);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y(16);
  float global = 1.0f;
  auto p = params(Format::kNVFP4, DType::kFloat32, x.data(), y.data(), 1, 16, 16);
  p.global_amax = &global;
  block_quant::block_quant_cpu(p);
  EXPECT_TRUE(std::isnan(y[3]));
  EXPECT_EQ(y[0], 0.5f);  // e2m1(0.7) with scale 1
  // A zero tensor amax: every block uses scale 1 (the unscaled E2M1 cast).
  global = 0.0f;
  x.assign(16, 2.2f);
  block_quant::block_quant_cpu(p);
  EXPECT_EQ(y[0], 2.0f);
  global = std::numeric_limits<float>::infinity();
  block_quant::block_quant_cpu(p);
  EXPECT_EQ(y[0], 2.0f);
  global = std::numeric_limits<float>::quiet_NaN();
  block_quant::block_quant_cpu(p);
  EXPECT_EQ(y[0], 2.0f);
  // A block far below the tensor amax whose E4M3 scale underflows outputs zeros.
  global = 1.0e6f;
  x.assign(16, 1.0e-3f);
  block_quant::block_quant_cpu(p);
  EXPECT_EQ(y[0], 0.0f);
}

TEST(BlockQuantNVFP4, PartialBlockEqualsZeroPadding) {
  const int64_t rows = 7, len = 45, padded = 48;
  const auto xf = test::random_values(rows * len, 11);
  std::vector<float> xp(rows * padded, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < len; ++i) xp[r * padded + i] = xf[r * len + i];
  }
  const float global = 3.0f;
  std::vector<float> y(xf.size()), yp(xp.size());
  auto p = params(Format::kNVFP4, DType::kFloat32, xf.data(), y.data(), rows, len, 16);
  p.global_amax = &global;
  block_quant::block_quant_cpu(p);
  auto pp = params(Format::kNVFP4, DType::kFloat32, xp.data(), yp.data(), rows, padded, 16);
  pp.global_amax = &global;
  block_quant::block_quant_cpu(pp);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < len; ++i) ASSERT_EQ(y[r * len + i], yp[r * padded + i]);
  }
}

TEST(BlockQuantNVFP4, InPlace) {
  auto x = test::random_values(4096, 12);
  std::vector<float> y(x.size());
  const float global = 5.0f;
  auto p = params(Format::kNVFP4, DType::kFloat32, x.data(), y.data(), 64, 64, 16);
  p.global_amax = &global;
  block_quant::block_quant_cpu(p);
  p.y = x.data();
  block_quant::block_quant_cpu(p);
  EXPECT_EQ(x, y);
}

// ---------------------------------------------------------------------------------------------
// MX

struct MxFormat {
  int e, m;
};

template <typename T>
void check_mx(MxFormat f, int64_t rows, int64_t row_len, int64_t block, uint32_t seed,
              bool static_amax, float magnitude = 1.0f) {
  auto raw = test::random_values(rows * row_len, seed);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] *= magnitude * std::ldexp(1.0f, int(i % 9) - 4);
  std::vector<float> xf;
  const auto x = to_storage<T>(raw, &xf);
  std::vector<T> y(x.size());
  auto p = params(Format::kMX, dtype_of<T>(), x.data(), y.data(), rows, row_len, block);
  p.exponent_bits = f.e;
  p.mantissa_bits = f.m;
  const int64_t nb = (row_len + block - 1) / block;
  std::vector<float> block_amax(rows * nb);
  for (size_t i = 0; i < block_amax.size(); ++i)
    block_amax[i] = magnitude * (0.3f + 0.7f * (i % 5));
  if (static_amax) p.block_amax = block_amax.data();
  block_quant::block_quant_cpu(p);
  const auto ref =
      reference_blocks(xf, rows, row_len, block, [&](const float* b, int64_t n, int64_t k) {
        const double bamax = static_amax ? block_amax[k] : test::ref_block_amax(b, n);
        return test::ref_mx_block(b, n, f.e, f.m, bamax);
      });
  expect_matches(y, ref, "mx");
}

class BlockQuantMX : public ::testing::TestWithParam<MxFormat> {};

TEST_P(BlockQuantMX, MatchesReference) {
  const MxFormat f = GetParam();
  check_mx<float>(f, 32, 256, 32, 21, false);
  check_mx<float>(f, 9, 70, 32, 22, false);          // partial blocks
  check_mx<float>(f, 8, 64, 32, 23, true);           // static block amax (saturates)
  check_mx<float>(f, 4, 64, 32, 24, false, 1e-36f);  // scales near the bottom of E8M0
  check_mx<float>(f, 4, 64, 32, 25, false, 1e30f);
  check_mx<Half>(f, 16, 96, 32, 26, false);
  check_mx<BFloat16>(f, 16, 90, 32, 27, false);
}

INSTANTIATE_TEST_SUITE_P(Formats, BlockQuantMX,
                         ::testing::Values(MxFormat{4, 3}, MxFormat{5, 2}, MxFormat{3, 2},
                                           MxFormat{2, 3}, MxFormat{2, 1}, MxFormat{0, 7}),
                         [](const auto& info) {
                           return "E" + std::to_string(info.param.e) + "M" +
                                  std::to_string(info.param.m);
                         });

std::vector<float> mx_block(std::vector<float> x, int e, int m) {
  std::vector<float> y(x.size());
  auto p = params(Format::kMX, DType::kFloat32, x.data(), y.data(), 1,
                  static_cast<int64_t>(x.size()), 32);
  p.exponent_bits = e;
  p.mantissa_bits = m;
  block_quant::block_quant_cpu(p);
  return y;
}

TEST(BlockQuantMXGolden, SpecMXFP4Example) {
  EXPECT_EQ(mx_block({0.1f, 0.2f, 0.35f, 0.16f, 0.85f, 0.9f, 0.67f, 0.76f}, 2, 1),
            (std::vector<float>{0.125f, 0.25f, 0.375f, 0.125f, 0.75f, 1.0f, 0.75f, 0.75f}));
}

TEST(BlockQuantMXGolden, MXINT8AndExactScaleExponent) {
  // amax 1 -> 2^ceil(log2(1/127)) = 2^-6: 0.3 * 64 = 19.2 -> 19.
  EXPECT_EQ(mx_block({1.0f, 0.3f, -0.5f, 0.0078125f}, 0, 7),
            (std::vector<float>{1.0f, 19.0f / 64, -0.5f, 0.0f}));
  // amax exactly 6 * 2^3 keeps scale 2^3; one ulp more needs 2^4.
  EXPECT_EQ(mx_block({48.0f, 1.0f}, 2, 1), (std::vector<float>{48.0f, 0.0f}));
  EXPECT_EQ(mx_block({std::nextafter(48.0f, 100.0f), 20.0f}, 2, 1),
            (std::vector<float>{48.0f, 16.0f}));
  // MXFP8 E4M3: amax 448 -> scale 1, the E4M3 grid itself (ties to even).
  EXPECT_EQ(mx_block({448.0f, 1.0625f, 1.1875f, 240.0f}, 4, 3),
            (std::vector<float>{448.0f, 1.0f, 1.25f, 240.0f}));
}

TEST(BlockQuantMXGolden, ZeroAndNaNBlocks) {
  auto y = mx_block(std::vector<float>(32, 0.0f), 2, 1);
  for (float v : y) EXPECT_EQ(v, 0.0f);
  // A NaN or an infinity makes the block's E8M0 scale NaN, so the whole block is NaN (as the MX
  // reference implementation does): E2M1 has no Inf, and saturating it to 6 would hide it.
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
    std::vector<float> x(32, 2.2f);
    x[5] = bad;
    y = mx_block(x, 2, 1);
    for (float v : y) EXPECT_TRUE(std::isnan(v)) << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// NF4

template <typename T>
void check_nf4(int64_t rows, int64_t row_len, int64_t block, int64_t scale_block, uint32_t seed,
               bool static_amax) {
  std::vector<float> xf;
  const auto x = to_storage<T>(test::random_values(rows * row_len, seed), &xf);
  std::vector<T> y(x.size());
  auto p = params(Format::kNF4, dtype_of<T>(), x.data(), y.data(), rows, row_len, block);
  p.scale_block_size = scale_block;
  const int64_t nb = (row_len + block - 1) / block;
  std::vector<float> block_amax(rows * nb);
  for (size_t i = 0; i < block_amax.size(); ++i) block_amax[i] = 0.5f + 0.25f * (i % 11);
  if (static_amax) p.block_amax = block_amax.data();
  block_quant::block_quant_cpu(p);

  // Reference: absmax per block, optional double quantization, nearest table entry.
  std::vector<double> absmax(rows * nb);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < nb; ++j) {
      absmax[r * nb + j] = static_amax ? block_amax[r * nb + j]
                                       : test::ref_block_amax(xf.data() + r * row_len + j * block,
                                                              std::min(block, row_len - j * block));
    }
  }
  std::vector<float> out_scale(absmax.begin(), absmax.end());
  if (scale_block != 0) {
    out_scale = test::ref_nf4_double_quant(absmax, scale_block > 0 ? scale_block : rows * nb);
  }
  int64_t ambiguous_seen = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < row_len; ++c) {
      const int64_t b = r * nb + c / block, i = r * row_len + c;
      const float v = xf[i] / static_cast<float>(absmax[b]);
      bool ambiguous = false;
      const int idx = test::ref_nf4_index(v, &ambiguous);
      const float t = static_cast<float>(test::ref_nf4_table()[idx]);
      const double want = ref_storage<T>(static_cast<float>(t * out_scale[b]));
      if (ambiguous) {
        ++ambiguous_seen;
        continue;
      }
      ASSERT_EQ(static_cast<double>(load_float(&y[i])), want) << "i=" << i << " x=" << xf[i];
    }
  }
  EXPECT_LT(ambiguous_seen, 4);
}

TEST(BlockQuantNF4, MatchesReferenceWithoutDoubleQuant) {
  check_nf4<float>(32, 256, 64, 0, 31, false);
  check_nf4<float>(7, 100, 64, 0, 32, false);
  check_nf4<float>(6, 128, 64, 0, 33, true);
  check_nf4<BFloat16>(16, 192, 64, 0, 34, false);
  check_nf4<Half>(8, 70, 64, 0, 35, false);
}

TEST(BlockQuantNF4, MatchesReferenceWithDoubleQuant) {
  check_nf4<float>(64, 512, 64, 256, 41, false);  // 512 scales: two groups of 256
  check_nf4<float>(50, 300, 64, 256, 42, false);  // 250 scales, partial blocks
  check_nf4<float>(33, 640, 64, 256, 43, false);  // 330 scales: last group partial
  check_nf4<float>(20, 256, 64, -1, 44, false);   // one group over all scales
  check_nf4<float>(8, 256, 64, 4, 45, true);      // static absmax, small groups
  check_nf4<BFloat16>(40, 512, 64, 256, 46, false);
}

TEST(BlockQuantNF4, GoldenTableAndTies) {
  const auto& table = test::ref_nf4_table();
  std::vector<float> x(64, 0.0f);
  for (int i = 0; i < 16; ++i) x[i] = static_cast<float>(table[i]);  // absmax 1: identity
  // Just below/above the midpoint of 0.0796 and 0.1609 (0.12025).
  x[16] = 0.1202f;
  x[17] = 0.1203f;
  x[18] = -0.99f;
  x[19] = 0.0796f * 0.5f;  // exactly on the fp32 midpoint of 0 and 0.0796: the lower entry
  std::vector<float> y(64);
  auto p = params(Format::kNF4, DType::kFloat32, x.data(), y.data(), 1, 64, 64);
  block_quant::block_quant_cpu(p);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(y[i], static_cast<float>(table[i])) << i;
  EXPECT_EQ(y[16], 0.0796f);
  EXPECT_EQ(y[17], 0.1609f);
  EXPECT_EQ(y[18], -1.0f);
  EXPECT_EQ(y[19], 0.0f);
  for (int i = 20; i < 64; ++i) EXPECT_EQ(y[i], 0.0f);
}

TEST(BlockQuantNF4, GoldenDoubleQuant) {
  // Four blocks with absmax 1, 2, 3, 4 in groups of two: mean 2.5, group 0 deviations
  // (-1.5, -0.5) -> codes (-127, -42) with dq scale 127 / 1.5.
  std::vector<float> x(256, 0.0f);
  for (int b = 0; b < 4; ++b) x[b * 64] = static_cast<float>(b + 1);
  std::vector<float> y(256);
  auto p = params(Format::kNF4, DType::kFloat32, x.data(), y.data(), 1, 256, 64);
  p.scale_block_size = 2;
  block_quant::block_quant_cpu(p);
  const float dq = 127.0f / 1.5f;
  EXPECT_EQ(y[0], -127.0f / dq + 2.5f);
  EXPECT_EQ(y[64], -42.0f / dq + 2.5f);
  EXPECT_EQ(y[128], 42.0f / dq + 2.5f);
  EXPECT_EQ(y[192], 127.0f / dq + 2.5f);
  EXPECT_EQ(y[1], 0.0f);
}

TEST(BlockQuantNF4, DequantizedScaleNeverNegative) {
  // Scales (2^-20, 2^-20, 1.0083, 3): mean ~1.002, group amax ~1.998, so a tiny scale's code is
  // rne(-63.69) = -64 and its int8 dequantization is ~ -0.005. Clamped at 0, the block outputs
  // zeros instead of flipping its signs.
  std::vector<float> x(64 * 4, 0.0f);
  x[0] = std::ldexp(1.0f, -20);
  x[64] = std::ldexp(1.0f, -20);
  x[128] = 1.0083f;
  x[192] = 3.0f;
  std::vector<float> y(x.size());
  auto p = params(Format::kNF4, DType::kFloat32, x.data(), y.data(), 1, 256, 64);
  p.scale_block_size = -1;
  block_quant::block_quant_cpu(p);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[64], 0.0f);
  EXPECT_GT(y[192], 2.9f);
}

// ---------------------------------------------------------------------------------------------
// The baseline (SSE2) and AVX2 copies of the CPU loops give the same bits.

template <typename T>
void compare_isa(BlockQuantParams p, const std::vector<float>& xf) {
  std::vector<T> x(xf.size()), y_avx2(xf.size()), y_base(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) store_float(&x[i], xf[i]);
  p.dtype = dtype_of<T>();
  p.x = x.data();
  p.y = y_avx2.data();
  block_quant::block_quant_cpu(p);
  set_cpu_avx2_allowed(false);
  p.y = y_base.data();
  block_quant::block_quant_cpu(p);
  set_cpu_avx2_allowed(true);
  for (size_t i = 0; i < xf.size(); ++i) {
    ASSERT_EQ(std::memcmp(&y_avx2[i], &y_base[i], sizeof(T)), 0) << "i=" << i;
  }
}

TEST(BlockQuantIsa, BaselineEqualsAvx2) {
  auto xf = test::random_values(96 * 512, 51);
  xf[7] = std::numeric_limits<float>::quiet_NaN();
  xf[100] = std::numeric_limits<float>::infinity();
  for (int i = 200; i < 264; ++i) xf[i] = 0.0f;
  const float global = 3.0f;
  std::vector<float> block_amax(96 * 512 / 16, 0.7f);
  for (const Format f : {Format::kNVFP4, Format::kMX, Format::kNF4}) {
    for (const int64_t block : {16, 32, 64}) {
      for (const bool with_static : {false, true}) {
        BlockQuantParams p = params(f, DType::kFloat32, nullptr, nullptr, 96, 512, block);
        p.global_amax = &global;
        p.exponent_bits = block == 32 ? 0 : 3;
        p.mantissa_bits = block == 32 ? 7 : 2;
        p.scale_block_size = block == 64 ? 256 : 0;
        if (with_static) p.block_amax = block_amax.data();
        compare_isa<float>(p, xf);
        compare_isa<Half>(p, xf);
        compare_isa<BFloat16>(p, xf);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Argument checks

TEST(BlockQuantChecks, BadArgumentsThrow) {
  float x[4] = {0, 0, 0, 0}, y[4];
  auto p = params(Format::kNVFP4, DType::kFloat32, x, y, 1, 4, 16);
  EXPECT_THROW(block_quant::block_quant_cpu(p), KernelError);  // no global amax
  p.format = Format::kMX;
  p.exponent_bits = 6;
  EXPECT_THROW(block_quant::block_quant_cpu(p), KernelError);
  p.exponent_bits = 0;
  p.mantissa_bits = 8;
  EXPECT_THROW(block_quant::block_quant_cpu(p), KernelError);
  p = params(Format::kNF4, DType::kFloat32, x, y, 1, 4, 0);
  EXPECT_THROW(block_quant::block_quant_cpu(p), KernelError);
  p.block_size = 64;
  p.scale_block_size = -2;
  EXPECT_THROW(block_quant::block_quant_cpu(p), KernelError);
}

}  // namespace
}  // namespace mopt::kernels
