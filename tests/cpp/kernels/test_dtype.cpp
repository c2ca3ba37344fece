// fp16 / bf16 conversions against the float64 significand-rounding reference, exhaustively
// over every 16-bit pattern and on edge values.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/dtype.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

TEST(DType, HalfRoundTripsEveryPattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = half_bits_to_float(static_cast<uint16_t>(b));
    const uint32_t exp = (b >> 10) & 0x1f, man = b & 0x3ff;
    if (exp == 31 && man != 0) {
      ASSERT_TRUE(std::isnan(f));
      continue;
    }
    ASSERT_EQ(float_to_half_bits(f), b) << std::hex << b;
  }
}

TEST(DType, HalfRoundsLikeReference) {
  auto v = test::random_values(200000, 21, 100.0f);
  for (float& x : v) {
    x *= 0.001f;
    const double ref = test::ref_round_significand(x, 10, -14);
    ASSERT_EQ(half_bits_to_float(float_to_half_bits(x)), static_cast<float>(ref)) << x;
  }
  // Ties between two halves go to the even one, overflow becomes inf, 2^-25 becomes 0.
  EXPECT_EQ(half_bits_to_float(float_to_half_bits(1.0f + 1.0f / 2048)), 1.0f);
  EXPECT_EQ(half_bits_to_float(float_to_half_bits(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);
  EXPECT_TRUE(std::isinf(half_bits_to_float(float_to_half_bits(65520.0f))));
  EXPECT_EQ(half_bits_to_float(float_to_half_bits(65519.0f)), 65504.0f);
  EXPECT_EQ(half_bits_to_float(float_to_half_bits(std::ldexp(1.0f, -25))), 0.0f);
  EXPECT_EQ(half_bits_to_float(float_to_half_bits(std::ldexp(1.5f, -25))), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isnan(half_bits_to_float(float_to_half_bits(std::nanf("")))));
}

TEST(DType, BFloat16RoundsLikeReference) {
  auto v = test::random_values(200000, 22, 10.0f);
  for (float x : v) {
    const double ref = test::ref_round_significand(x, 7, -126);
    ASSERT_EQ(bfloat16_bits_to_float(float_to_bfloat16_bits(x)), static_cast<float>(ref)) << x;
  }
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bfloat16_bits_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bfloat16_bits(f), b);
  }
  EXPECT_TRUE(std::isnan(bfloat16_bits_to_float(float_to_bfloat16_bits(std::nanf("")))));
}

}  // namespace
}  // namespace mopt::kernels
