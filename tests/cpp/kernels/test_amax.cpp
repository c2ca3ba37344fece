// CPU amax reduction against a naive double loop.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/layout.h"
#include "amax/amax.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

std::vector<double> naive_amax(const std::vector<float>& x, const std::vector<int64_t>& shape,
                               const std::vector<bool>& keep) {
  int64_t out = 1;
  for (size_t d = 0; d < shape.size(); ++d) if (keep[d]) out *= shape[d];
  std::vector<double> r(out, 0.0);
  for (int64_t i = 0; i < static_cast<int64_t>(x.size()); ++i) {
    int64_t flat = i, idx = 0, mult = 1;
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      const int64_t c = flat % shape[d];
      flat /= shape[d];
      if (keep[d]) {
        idx += c * mult;
        mult *= shape[d];
      }
    }
    const double a = std::fabs(static_cast<double>(x[i]));
    if (std::isnan(a) || std::isnan(r[idx])) r[idx] = std::numeric_limits<double>::quiet_NaN();
    else r[idx] = std::max(r[idx], a);
  }
  return r;
}

void check(const std::vector<int64_t>& shape, const std::vector<bool>& keep, uint32_t seed,
           bool inject_nan = false) {
  int64_t numel = 1;
  for (auto s : shape) numel *= s;
  auto x = test::random_values(numel, seed);
  if (inject_nan && numel > 3) x[numel / 3] = std::nanf("");
  bool k[16];
  for (size_t i = 0; i < keep.size(); ++i) k[i] = keep[i];
  reduce::AmaxParams p;
  p.x = x.data();
  p.layout = make_reduce_layout(shape.data(), static_cast<int>(shape.size()), k);
  std::vector<float> out(p.layout.out_numel, -1.0f);
  p.out = out.data();
  reduce::amax_cpu(p);
  const auto ref = naive_amax(x, shape, keep);
  ASSERT_EQ(out.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(ref[i])) {
      ASSERT_TRUE(std::isnan(out[i])) << i;
    } else {
      ASSERT_EQ(out[i], static_cast<float>(ref[i])) << "slot " << i;
    }
  }
}

TEST(Amax, PerTensorLarge) { check({1 << 20}, {false}, 1); }
TEST(Amax, PerTensorOddSize) { check({3, 7, 11}, {false, false, false}, 2); }
TEST(Amax, OneElement) { check({1}, {false}, 3); }
TEST(Amax, AxisZero) { check({129, 257}, {true, false}, 4); }
TEST(Amax, LastAxisKeptManyRows) { check({4099, 33}, {false, true}, 5); }
TEST(Amax, MiddleAxis) { check({5, 6, 7}, {false, true, false}, 6); }
TEST(Amax, TwoDimBlocks) { check({4, 128, 3, 128}, {true, false, true, false}, 7); }
TEST(Amax, AllKept) { check({17, 3}, {true, true}, 8); }
TEST(Amax, NaNPropagatesPerTensor) { check({100000}, {false}, 9, true); }
TEST(Amax, NaNPropagatesPerChannel) { check({64, 1000}, {true, false}, 10, true); }

TEST(Amax, InfinityIsReported) {
  std::vector<float> x(70000, 1.0f);
  x[12345] = -std::numeric_limits<float>::infinity();
  int64_t shape = 70000;
  bool keep = false;
  reduce::AmaxParams p;
  p.x = x.data();
  p.layout = make_reduce_layout(&shape, 1, &keep);
  float out = 0.0f;
  p.out = &out;
  reduce::amax_cpu(p);
  EXPECT_TRUE(std::isinf(out));
}

TEST(Amax, HalfInput) {
  std::vector<Half> x(1000);
  float expect = 0.0f;
  for (int i = 0; i < 1000; ++i) {
    store_float(&x[i], std::sin(static_cast<float>(i)) * 3.0f);
    expect = std::max(expect, std::fabs(load_float(&x[i])));
  }
  int64_t shape = 1000;
  bool keep = false;
  reduce::AmaxParams p;
  p.x = x.data();
  p.dtype = DType::kFloat16;
  p.layout = make_reduce_layout(&shape, 1, &keep);
  float out = 0.0f;
  p.out = &out;
  reduce::amax_cpu(p);
  EXPECT_EQ(out, expect);
}

}  // namespace
}  // namespace mopt::kernels
