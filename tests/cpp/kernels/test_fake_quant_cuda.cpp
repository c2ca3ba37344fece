// CUDA fake-quant and amax kernels against their CPU twins, bit for bit. Compiled whenever nvcc
// exists; skipped when no GPU is present.
#include <gtest/gtest.h>

#include <vector>

#include "common/dtype.h"
#include "common/layout.h"
#include "cuda_test_util.h"
#include "fake_quant/fake_quant.h"
#include "amax/amax.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using test::DeviceBuffer;

struct Shape {
  std::vector<int64_t> dims;
  std::vector<bool> keep;
};

ReduceLayout layout_of(const Shape& s) {
  bool k[16];
  for (size_t i = 0; i < s.keep.size(); ++i) k[i] = s.keep[i];
  return make_reduce_layout(s.dims.data(), static_cast<int>(s.dims.size()), k);
}

template <typename T>
void compare_fake_quant(const Shape& shape, Format format, int bits_or_e, int m,
                        size_t misalign, bool with_amax) {
  const ReduceLayout l = layout_of(shape);
  auto xf = test::random_values(l.numel, 31 + static_cast<uint32_t>(l.numel));
  std::vector<T> x(l.numel);
  for (int64_t i = 0; i < l.numel; ++i) store_float(&x[i], xf[i]);
  std::vector<float> amax(l.out_numel);
  for (int64_t i = 0; i < l.out_numel; ++i) amax[i] = (i % 5 == 4) ? 0.0f : 0.3f + 0.2f * (i % 7);

  fake_quant::FakeQuantParams p;
  p.dtype = std::is_same_v<T, float> ? DType::kFloat32
            : std::is_same_v<T, Half> ? DType::kFloat16 : DType::kBFloat16;
  p.layout = l;
  p.format = format;
  if (format == Format::kInt) {
    p.num_bits = bits_or_e;
    // integers have no mantissa: m = 1 selects full_range, m = 2 zero points (asymmetric)
    p.full_range = m >= 1;
  } else {
    p.exponent_bits = bits_or_e;
    p.mantissa_bits = m;
  }
  std::vector<T> y_cpu(l.numel);
  p.x = x.data();
  p.y = y_cpu.data();
  p.amax = with_amax ? amax.data() : nullptr;
  std::vector<float> zp(l.out_numel);
  for (int64_t i = 0; i < l.out_numel; ++i) zp[i] = static_cast<float>(i % 15 - 7);
  const bool asym = format == Format::kInt && m == 2;
  p.zero_point = asym ? zp.data() : nullptr;
  fake_quant::fake_quant_cpu(p);

  DeviceBuffer<T> dx(x, misalign), dy(l.numel, misalign);
  DeviceBuffer<float> damax(amax), dzp(zp);
  p.x = dx.get();
  p.y = dy.get();
  p.amax = with_amax ? damax.get() : nullptr;
  p.zero_point = asym ? dzp.get() : nullptr;
  fake_quant::fake_quant_cuda(p, nullptr);
  EXPECT_TRUE(test::bitwise_equal(dy.to_host(), y_cpu));
}

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {{1 << 20}, {false}},          {{1}, {false}},
      {{1001, 37}, {true, false}},   {{33, 129}, {false, true}},
      {{4, 128, 3, 128}, {true, false, true, false}}, {{6, 5, 7}, {false, true, false}},
      {{257, 8}, {true, false}}};
  return s;
}

template <typename T>
void all_cases() {
  for (const auto& s : shapes()) {
    for (size_t mis : {0, 1}) {
      compare_fake_quant<T>(s, Format::kInt, 8, 0, mis, true);
      compare_fake_quant<T>(s, Format::kInt, 4, 0, mis, true);
      compare_fake_quant<T>(s, Format::kInt, 4, 1, mis, true);
      compare_fake_quant<T>(s, Format::kInt, 4, 2, mis, true);
      compare_fake_quant<T>(s, Format::kMinifloat, 4, 3, mis, true);
      compare_fake_quant<T>(s, Format::kMinifloat, 5, 2, mis, true);
      compare_fake_quant<T>(s, Format::kMinifloat, 4, 3, mis, false);
    }
  }
}

TEST(FakeQuantCuda, Float32MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<float>();
}
TEST(FakeQuantCuda, Float16MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<Half>();
}
TEST(FakeQuantCuda, BFloat16MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<BFloat16>();
}

TEST(AmaxCuda, MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  for (const auto& s : shapes()) {
    const ReduceLayout l = layout_of(s);
    auto x = test::random_values(l.numel, 77);
    if (l.numel > 10) x[l.numel / 2] = std::nanf("");
    reduce::AmaxParams p;
    p.layout = l;
    std::vector<float> cpu(l.out_numel);
    p.x = x.data();
    p.out = cpu.data();
    reduce::amax_cpu(p);
    DeviceBuffer<float> dx(x, 1), dout(l.out_numel);
    p.x = dx.get();
    p.out = dout.get();
    reduce::amax_cuda(p, nullptr);
    EXPECT_TRUE(test::bitwise_equal(dout.to_host(), cpu));
  }
}

TEST(AsymRangeCuda, MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  auto lo = test::random_values(1000, 5), hi = test::random_values(1000, 6);
  lo[3] = hi[3] = 0.0f;  // an all-zero range
  fake_quant::AsymRangeParams p;
  p.n = 1000;
  p.num_bits = 4;
  std::vector<float> amax(1000), zp(1000);
  p.lo = lo.data();
  p.hi = hi.data();
  p.amax = amax.data();
  p.zero_point = zp.data();
  fake_quant::int_asym_range_cpu(p);
  DeviceBuffer<float> dlo(lo), dhi(hi), damax(1000), dzp(1000);
  p.lo = dlo.get();
  p.hi = dhi.get();
  p.amax = damax.get();
  p.zero_point = dzp.get();
  fake_quant::int_asym_range_cuda(p, nullptr);
  EXPECT_TRUE(test::bitwise_equal(damax.to_host(), amax));
  EXPECT_TRUE(test::bitwise_equal(dzp.to_host(), zp));
}

}  // namespace
}  // namespace mopt::kernels
