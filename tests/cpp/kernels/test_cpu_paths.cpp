// The CPU kernels run one of two loops, baseline (SSE2) or AVX2, out of place or in place, aligned
// or not. Every combination must match the naive references and give the same bits as every
// other (the CUDA twins are compared with the CPU result).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/cpu_isa.h"
#include "common/dtype.h"
#include "common/layout.h"
#include "fake_quant/fake_quant.h"
#include "amax/amax.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using fake_quant::FakeQuantParams;

/// Runs the CPU kernels with the AVX2 loops allowed or not; restores the default on scope exit.
class IsaGuard {
 public:
  explicit IsaGuard(bool avx2) { set_cpu_avx2_allowed(avx2); }
  ~IsaGuard() { set_cpu_avx2_allowed(true); }
};

ReduceLayout layout_for(std::vector<int64_t> shape, std::vector<bool> keep) {
  bool k[16];
  for (size_t i = 0; i < keep.size(); ++i) k[i] = keep[i];
  return make_reduce_layout(shape.data(), static_cast<int>(shape.size()), k);
}

/// Inputs with the values that take the select branches: NaN, infinities, signed zeros, fp32 and
/// fp16 subnormals, exact ties of the INT8 grid at amax 3, large outliers.
std::vector<float> tricky_values(size_t n, uint32_t seed) {
  auto x = test::random_values(n, seed, 2.0f);
  const float special[] = {std::numeric_limits<float>::quiet_NaN(),
                           -std::numeric_limits<float>::quiet_NaN(),
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           0.0f,
                           -0.0f,
                           1e-40f,
                           -3e-39f,
                           3e-6f,
                           -6e-8f,
                           1.5f * 3.0f / 127.0f,
                           -2.5f * 3.0f / 127.0f,
                           1e30f,
                           -65520.0f};
  for (size_t i = 0; i < n; i += 37) x[i] = special[(i / 37) % (sizeof(special) / sizeof(float))];
  return x;
}

/// Storage rounding of the reference result (fp16: 10 mantissa bits, bf16: 7).
double to_storage(double v, DType d) {
  if (d == DType::kFloat16) return test::ref_round_significand(v, 10, -14);
  if (d == DType::kBFloat16) return test::ref_round_significand(v, 7, -126);
  return v;
}

/// x as bytes of dtype d.
std::vector<uint8_t> encode(const std::vector<float>& x, DType d) {
  std::vector<uint8_t> b(x.size() * dtype_size(d));
  for (size_t i = 0; i < x.size(); ++i) {
    if (d == DType::kFloat32) std::memcpy(b.data() + 4 * i, &x[i], 4);
    if (d == DType::kFloat16) store_float(reinterpret_cast<Half*>(b.data()) + i, x[i]);
    if (d == DType::kBFloat16) store_float(reinterpret_cast<BFloat16*>(b.data()) + i, x[i]);
  }
  return b;
}

float decode(const uint8_t* b, int64_t i, DType d) {
  if (d == DType::kFloat16) return load_float(reinterpret_cast<const Half*>(b) + i);
  if (d == DType::kBFloat16) return load_float(reinterpret_cast<const BFloat16*>(b) + i);
  float f;
  std::memcpy(&f, b + 4 * i, 4);
  return f;
}

struct FqCase {
  DType dtype;
  bool integer;
};

class FakeQuantPaths : public ::testing::TestWithParam<FqCase> {};

// Per tensor, per channel on the last axis (scales vary along the inner loop, with zero and tiny
// amax entries) and on the first axis, unscaled (minifloat): each path against the reference.
TEST_P(FakeQuantPaths, EveryPathMatchesReference) {
  const FqCase c = GetParam();
  const int64_t rows = 37, cols = 1031;  // odd sizes: tiles, rows and vectors do not line up
  const int64_t n = rows * cols;
  const auto xf = tricky_values(n, 3 + static_cast<uint32_t>(c.dtype));
  const auto xb = encode(xf, c.dtype);
  std::vector<float> amax_cols(cols), amax_rows(rows);
  for (int64_t i = 0; i < cols; ++i) amax_cols[i] = 0.25f + 0.01f * static_cast<float>(i % 301);
  for (int64_t i = 0; i < rows; ++i) amax_rows[i] = 0.5f + 0.3f * static_cast<float>(i);
  amax_cols[5] = 0.0f;
  amax_cols[17] = 1e-9f;
  amax_rows[2] = 0.0f;
  const float amax_tensor = 3.0f;
  const auto table = test::minifloat_values(4, 3);

  struct Granularity {
    const char* name;
    ReduceLayout layout;
    const float* amax;
  };
  const Granularity grans[] = {
      {"per-tensor", layout_for({rows, cols}, {false, false}), &amax_tensor},
      {"last-axis", layout_for({rows, cols}, {false, true}), amax_cols.data()},
      {"first-axis", layout_for({rows, cols}, {true, false}), amax_rows.data()},
      {"unscaled", layout_for({rows, cols}, {false, false}), nullptr}};
  for (const Granularity& g : grans) {
    if (c.integer && g.amax == nullptr) continue;  // integer formats always need an amax
    // The reference, from the decoded input (what the kernel reads).
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) {
      const float xi = decode(xb.data(), i, c.dtype);
      const float* a = g.amax == nullptr            ? nullptr
                       : g.amax == &amax_tensor     ? g.amax
                       : g.amax == amax_cols.data() ? &amax_cols[i % cols]
                                                    : &amax_rows[i / cols];
      const double r = c.integer ? test::ref_fake_quant_int(xi, *a, 8, false, false)
                                 : test::ref_fake_quant_minifloat(xi, a, table);
      ref[i] = to_storage(r, c.dtype);
    }
    std::vector<uint8_t> first;
    for (bool avx2 : {false, true}) {
      IsaGuard guard(avx2);
      FakeQuantParams p;
      p.dtype = c.dtype;
      p.layout = g.layout;
      p.amax = g.amax;
      p.format = c.integer ? Format::kInt : Format::kMinifloat;
      std::vector<uint8_t> y(xb.size());
      p.x = xb.data();
      p.y = y.data();
      fake_quant::fake_quant_cpu(p);
      for (int64_t i = 0; i < n; ++i) {
        const float yi = decode(y.data(), i, c.dtype);
        if (std::isnan(ref[i])) {
          ASSERT_TRUE(std::isnan(yi)) << g.name << " i=" << i;
        } else {
          ASSERT_EQ(yi, static_cast<float>(ref[i]))
              << g.name << " avx2=" << avx2 << " i=" << i << " x=" << decode(xb.data(), i, c.dtype);
        }
      }
      if (first.empty()) {
        first = y;
      } else {
        ASSERT_EQ(std::memcmp(first.data(), y.data(), y.size()), 0) << g.name << ": paths differ";
      }
      // In place gives the same bits.
      std::vector<uint8_t> inplace = xb;
      p.x = inplace.data();
      p.y = inplace.data();
      fake_quant::fake_quant_cpu(p);
      ASSERT_EQ(std::memcmp(first.data(), inplace.data(), y.size()), 0) << g.name << " in place";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Types, FakeQuantPaths,
    ::testing::Values(FqCase{DType::kFloat32, true}, FqCase{DType::kFloat32, false},
                      FqCase{DType::kFloat16, true}, FqCase{DType::kFloat16, false},
                      FqCase{DType::kBFloat16, true}, FqCase{DType::kBFloat16, false}),
    [](const ::testing::TestParamInfo<FqCase>& info) {
      const char* d = info.param.dtype == DType::kFloat32   ? "Float32"
                      : info.param.dtype == DType::kFloat16 ? "Float16"
                                                            : "BFloat16";
      return std::string(d) + (info.param.integer ? "Int8" : "E4M3");
    });

// Every 16-bit input pattern through each format: the baseline and AVX2 loops agree bit for bit
// (NaN payloads included, which the value references above cannot see).
TEST(FakeQuantPaths, EverySixteenBitPatternSameOnEveryPath) {
  std::vector<uint16_t> x(65536);
  for (uint32_t i = 0; i < 65536; ++i) x[i] = static_cast<uint16_t>(i);
  const float amax = 2.0f;
  for (DType d : {DType::kFloat16, DType::kBFloat16}) {
    for (int f = 0; f < 4; ++f) {
      FakeQuantParams p;
      p.x = x.data();
      p.dtype = d;
      p.layout = layout_for({65536}, {false});
      p.amax = f == 3 ? nullptr : &amax;
      p.format = f == 0 ? Format::kInt : Format::kMinifloat;
      p.exponent_bits = f == 2 ? 5 : 4;
      p.mantissa_bits = f == 2 ? 2 : 3;
      std::vector<uint16_t> first;
      for (bool avx2 : {false, true}) {
        IsaGuard guard(avx2);
        std::vector<uint16_t> y(65536);
        p.y = y.data();
        fake_quant::fake_quant_cpu(p);
        if (first.empty()) {
          first = y;
        } else {
          ASSERT_EQ(first, y) << "dtype " << static_cast<int>(d) << " format " << f;
        }
      }
    }
  }
}

// Tensors that start one element past an aligned address, out of place and in place: the
// vector loops' peeled heads and tails must cover every element exactly once.
TEST(FakeQuantPaths, MisalignedAndInPlace) {
  const int64_t n = 50001;
  auto x = test::random_values(n + 1, 9);
  std::vector<float> ref(n + 1, -7.0f);
  const float amax = 2.5f;
  for (int64_t i = 1; i <= n; ++i) {
    ref[i] = static_cast<float>(test::ref_fake_quant_int(x[i], amax, 8, false, true));
  }
  for (bool avx2 : {false, true}) {
    IsaGuard guard(avx2);
    std::vector<float> y(n + 1, -7.0f), inplace = x;
    inplace[0] = -7.0f;
    FakeQuantParams p;
    p.x = x.data() + 1;
    p.y = y.data() + 1;
    p.amax = &amax;
    p.layout = layout_for({n}, {false});
    p.narrow_range = true;
    fake_quant::fake_quant_cpu(p);
    EXPECT_EQ(y, ref) << "avx2=" << avx2;  // y[0] untouched, every other element quantized
    p.x = inplace.data() + 1;
    p.y = inplace.data() + 1;
    fake_quant::fake_quant_cpu(p);
    EXPECT_EQ(inplace, ref) << "in place, avx2=" << avx2;
  }
}

// amax on both loops: NaN wins wherever it is, infinity is reported, -0 counts as 0.
TEST(AmaxPaths, BaselineAndAvx2MatchNaive) {
  const std::vector<int64_t> shape = {29, 3, 517};
  const int64_t n = 29 * 3 * 517;
  for (int variant = 0; variant < 3; ++variant) {
    auto x = test::random_values(n, 40 + variant);
    if (variant >= 1) x[n / 2] = -std::numeric_limits<float>::infinity();
    if (variant == 2) {
      x[777] = std::numeric_limits<float>::quiet_NaN();
      x[n - 1] = -std::numeric_limits<float>::quiet_NaN();
    }
    for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      const auto xb = encode(x, d);
      for (const std::vector<bool>& keep : std::vector<std::vector<bool>>{{false, false, false},
                                                                          {true, false, false},
                                                                          {false, false, true},
                                                                          {false, true, false}}) {
        const ReduceLayout l = layout_for(shape, keep);
        // Naive: running max over the decoded values, NaN sticky.
        std::vector<double> ref(l.out_numel, 0.0);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t c2 = i % 517, c1 = (i / 517) % 3, c0 = i / (3 * 517);
          int64_t slot = 0;
          if (keep[0]) slot = c0;
          if (keep[1]) slot = c1;
          if (keep[2]) slot = c2;
          const double a = std::fabs(static_cast<double>(decode(xb.data(), i, d)));
          ref[slot] =
              (std::isnan(a) || std::isnan(ref[slot])) ? std::nan("") : std::max(ref[slot], a);
        }
        for (bool avx2 : {false, true}) {
          IsaGuard guard(avx2);
          std::vector<float> out(l.out_numel, -1.0f);
          reduce::AmaxParams p;
          p.x = xb.data();
          p.dtype = d;
          p.layout = l;
          p.out = out.data();
          reduce::amax_cpu(p);
          for (int64_t s = 0; s < l.out_numel; ++s) {
            if (std::isnan(ref[s])) {
              ASSERT_TRUE(std::isnan(out[s])) << "slot " << s;
            } else {
              ASSERT_EQ(out[s], static_cast<float>(ref[s]))
                  << "avx2=" << avx2 << " dtype " << static_cast<int>(d) << " slot " << s;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace mopt::kernels
