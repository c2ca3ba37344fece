// GGUF block kernels (Q8_0, Q4_0, Q5_0, Q4_K) on CPU against a naive decoder of ggml's block
// layouts written here from the format description (sharing no code with the kernels): the
// fake-quantized values are exactly what the packed bytes decode to, and they stay within the
// format's rounding error of the input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/dtype.h"
#include "gguf/gguf.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using gguf::GgufParams;
using gguf::GgufType;

// IEEE half -> double, from the bit fields.
double half_to_double(const uint8_t* p) {
  const uint16_t h = static_cast<uint16_t>(p[0] | (p[1] << 8));
  const int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
  double v = exp == 0 ? std::ldexp(man, -24) : std::ldexp(1024 + man, exp - 25);
  if (exp == 31) v = man ? NAN : INFINITY;
  return sign ? -v : v;
}

// Decodes one row of `type` blocks as ggml's dequantize_row_* defines them.
std::vector<double> decode(GgufType type, const uint8_t* b, int64_t n) {
  std::vector<double> y(n);
  if (type == GgufType::kQ8_0) {
    for (int64_t k = 0; k < n / 32; ++k, b += 34) {
      for (int i = 0; i < 32; ++i) {
        y[k * 32 + i] = half_to_double(b) * static_cast<int8_t>(b[2 + i]);
      }
    }
  } else if (type == GgufType::kQ4_0) {
    for (int64_t k = 0; k < n / 32; ++k, b += 18) {
      for (int i = 0; i < 16; ++i) {
        y[k * 32 + i] = half_to_double(b) * ((b[2 + i] & 15) - 8);
        y[k * 32 + 16 + i] = half_to_double(b) * ((b[2 + i] >> 4) - 8);
      }
    }
  } else if (type == GgufType::kQ5_0) {
    for (int64_t k = 0; k < n / 32; ++k, b += 22) {
      uint32_t qh;
      std::memcpy(&qh, b + 2, 4);
      for (int i = 0; i < 16; ++i) {
        const int lo = (b[6 + i] & 15) | static_cast<int>(((qh >> i) & 1) << 4);
        const int hi = (b[6 + i] >> 4) | static_cast<int>(((qh >> (i + 16)) & 1) << 4);
        y[k * 32 + i] = half_to_double(b) * (lo - 16);
        y[k * 32 + 16 + i] = half_to_double(b) * (hi - 16);
      }
    }
  } else {
    for (int64_t k = 0; k < n / 256; ++k, b += 144) {
      const double d = half_to_double(b), dmin = half_to_double(b + 2);
      const uint8_t* s = b + 4;
      for (int j = 0; j < 8; ++j) {
        const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        const int m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        for (int i = 0; i < 32; ++i) {
          const uint8_t q = b[16 + (j / 2) * 32 + i];
          const int code = j % 2 ? q >> 4 : q & 15;
          // fp32 products, as llama.cpp computes them: d * sc, dmin * m, then d_j * q - m_j
          const float dj = static_cast<float>(d) * static_cast<float>(sc);
          const float mj = static_cast<float>(dmin) * static_cast<float>(m);
          const float prod = dj * static_cast<float>(code);
          y[k * 256 + j * 32 + i] = static_cast<float>(prod - mj);
        }
      }
    }
  }
  return y;
}

struct Result {
  std::vector<float> y;
  std::vector<uint8_t> packed;
};

Result run_cpu(GgufType type, const std::vector<float>& x, int64_t rows, int64_t row_len) {
  Result r;
  r.y.resize(x.size());
  r.packed.resize(gguf::gguf_packed_bytes(type, rows, row_len));
  GgufParams p;
  p.x = x.data();
  p.y = r.y.data();
  p.packed = r.packed.data();
  p.rows = rows;
  p.row_len = row_len;
  p.type = type;
  gguf::gguf_quant_cpu(p);
  return r;
}

class GgufTypes : public ::testing::TestWithParam<GgufType> {};

TEST_P(GgufTypes, FakeQuantEqualsDecodedBytesAndIsCloseToInput) {
  const GgufType type = GetParam();
  const int64_t rows = 6, row_len = 512;
  auto x = test::random_values(rows * row_len, 11 + static_cast<uint32_t>(type), 0.05f);
  for (int i = 0; i < 32; ++i) x[32 + i] = 0.0f;  // an all-zero block
  for (int i = 0; i < 32; ++i) x[64 + i] = std::fabs(x[64 + i]);  // a positive block (Q4_K min 0)
  const Result r = run_cpu(type, x, rows, row_len);
  const int64_t row_bytes = gguf::gguf_packed_bytes(type, 1, row_len);
  const int bs = gguf::block_elements(type);
  for (int64_t row = 0; row < rows; ++row) {
    const auto ref = decode(type, r.packed.data() + row * row_bytes, row_len);
    for (int64_t i = 0; i < row_len; ++i) {
      const int64_t at = row * row_len + i;
      ASSERT_EQ(static_cast<float>(ref[i]), r.y[at]) << "element " << at;
    }
    // Error bound per block: Q8_0 half a step (amax / 127 / 2); Q4_0 / Q5_0 one step (the code
    // range [-2^(b-1), 2^(b-1) - 1] is one short on the side opposite the signed max); plus the
    // fp16 rounding of the scale over the code range. Q4_K: steps and offsets from 6-bit codes.
    for (int64_t k = 0; k < row_len / bs; ++k) {
      double amax = 0.0, lo = 0.0, hi = 0.0;
      for (int i = 0; i < bs; ++i) {
        const double v = x[row * row_len + k * bs + i];
        amax = std::max(amax, std::fabs(v));
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      const double steps = type == GgufType::kQ8_0 ? 127 : type == GgufType::kQ4_0 ? 8 : 16;
      const double half = type == GgufType::kQ8_0 ? 0.5 : 1.0;
      double bound = amax / steps * (half + 1e-3) + amax * 1e-3;
      if (type == GgufType::kQ4_K) bound = (hi - lo) / 15.0 * 1.6 + (hi - lo) * 0.05;
      for (int i = 0; i < bs; ++i) {
        const int64_t at = row * row_len + k * bs + i;
        ASSERT_LE(std::fabs(r.y[at] - x[at]), bound + 1e-12) << "element " << at;
      }
    }
  }
  for (int i = 0; i < 32; ++i) EXPECT_EQ(r.y[32 + i], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Types, GgufTypes,
                         ::testing::Values(GgufType::kQ8_0, GgufType::kQ4_0, GgufType::kQ5_0,
                                           GgufType::kQ4_K));

TEST(Gguf, Q4_0BlockBytesByHand) {
  // max magnitude -1.6 at element 3: d = -1.6 / -8 = 0.2, codes trunc(x / d + 8.5)
  std::vector<float> x(32, 0.0f);
  x[0] = 0.2f;
  x[3] = -1.6f;
  x[16] = 1.0f;
  x[31] = 1.4f;
  const Result r = run_cpu(GgufType::kQ4_0, x, 1, 32);
  ASSERT_EQ(r.packed.size(), 18u);
  EXPECT_EQ(half_to_double(r.packed.data()), static_cast<double>(gguf::fp16_value(0.2f)));
  EXPECT_EQ(r.packed[2], (9) | (13 << 4));   // x[0] = 1 step -> 9, x[16] = 5 steps -> 13
  EXPECT_EQ(r.packed[5], (0) | (8 << 4));    // x[3] = -8 steps -> 0, x[19] = 0 -> 8
  EXPECT_EQ(r.packed[17], (8) | (15 << 4));  // x[15] = 0 -> 8, x[31] = 7 steps -> 15
}

TEST(Gguf, Q8_0ScaleIsTheFp16OfAmaxOver127) {
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = 0.01f * (i - 13);
  const Result r = run_cpu(GgufType::kQ8_0, x, 1, 32);
  const float d = gguf::fp16_value(0.18f / 127.0f);
  EXPECT_EQ(half_to_double(r.packed.data()), static_cast<double>(d));
  EXPECT_EQ(static_cast<int8_t>(r.packed[2 + 31]), 127);
  EXPECT_EQ(static_cast<int8_t>(r.packed[2 + 13]), 0);
  EXPECT_EQ(r.y[31], 127.0f * d);
}

TEST(Gguf, RowTypeFollowsLlamaCppFallbacks) {
  EXPECT_EQ(gguf::gguf_row_type(GgufType::kQ4_K, 512), GgufType::kQ4_K);
  EXPECT_EQ(gguf::gguf_row_type(GgufType::kQ4_K, 64), GgufType::kQ5_0);
  EXPECT_EQ(gguf::gguf_row_type(GgufType::kQ4_K, 172), GgufType::kF32);
  EXPECT_EQ(gguf::gguf_row_type(GgufType::kQ8_0, 64), GgufType::kQ8_0);
  EXPECT_EQ(gguf::gguf_row_type(GgufType::kQ4_0, 172), GgufType::kF32);
}

TEST(Gguf, RejectsRowsThatAreNotWholeBlocks) {
  std::vector<float> x(48, 1.0f), y(48);
  GgufParams p;
  p.x = x.data();
  p.y = y.data();
  p.rows = 1;
  p.row_len = 48;
  p.type = GgufType::kQ4_0;
  EXPECT_THROW(gguf::gguf_quant_cpu(p), KernelError);
  EXPECT_THROW(gguf::gguf_type_from_name("q3_k"), KernelError);
}

TEST(Gguf, HalfInputQuantizesItsFloatValues) {
  const auto xf = test::random_values(256, 5, 0.1f);
  std::vector<Half> xh(256), yh(256);
  std::vector<float> xr(256);
  for (int i = 0; i < 256; ++i) {
    store_float(&xh[i], xf[i]);
    xr[i] = load_float(&xh[i]);
  }
  GgufParams p;
  p.x = xh.data();
  p.y = yh.data();
  p.dtype = DType::kFloat16;
  p.rows = 1;
  p.row_len = 256;
  p.type = GgufType::kQ4_K;
  gguf::gguf_quant_cpu(p);
  const Result r = run_cpu(GgufType::kQ4_K, xr, 1, 256);
  for (int i = 0; i < 256; ++i) {
    Half want;
    store_float(&want, r.y[i]);  // computed in fp32, stored in the input dtype
    EXPECT_EQ(yh[i].bits, want.bits) << "element " << i;
  }
}

}  // namespace
}  // namespace mopt::kernels
