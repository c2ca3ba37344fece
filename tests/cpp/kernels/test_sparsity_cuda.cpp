// CUDA N:M masks and 2:4 compression against their CPU twins, byte for byte. Compiled whenever
// nvcc exists; skipped when no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "cuda_test_util.h"
#include "reference.h"
#include "sparsity/sparsity.h"

namespace mopt::kernels {
namespace {

using sparsity::Compress2to4Params;
using sparsity::Decompress2to4Params;
using sparsity::NmMaskParams;
using test::DeviceBuffer;

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::kFloat32;
  if constexpr (std::is_same_v<T, Half>) return DType::kFloat16;
  return DType::kBFloat16;
}

template <typename T>
std::vector<T> stored(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) store_float(&out[i], v[i]);
  return out;
}

template <typename T>
void compare_masks(uint32_t seed) {
  const std::pair<int, int> patterns[] = {{2, 4}, {4, 8}, {1, 4}, {3, 4}, {16, 32}, {1, 2}, {3, 7}};
  for (const auto& [n, m] : patterns) {
    for (bool with_factor : {false, true}) {
      SCOPED_TRACE(testing::Message() << n << ":" << m << " factor " << with_factor);
      const int64_t rows = 77, cols = static_cast<int64_t>(m) * 45;
      auto v = test::random_values(rows * cols, seed++);
      for (size_t i = 3; i < v.size(); i += 11) v[i] = -v[i - 1];  // ties
      const auto w = stored<T>(v);
      auto factor = test::random_values(cols, seed++);
      for (float& f : factor) f = std::fabs(f);
      factor[1] = 0.0f;

      std::vector<uint8_t> mask(rows * cols);
      NmMaskParams p;
      p.w = w.data();
      p.dtype = dtype_of<T>();
      p.rows = rows;
      p.cols = cols;
      p.column_factor = with_factor ? factor.data() : nullptr;
      p.n = n;
      p.m = m;
      p.mask = mask.data();
      sparsity::nm_mask_cpu(p);

      DeviceBuffer<T> d_w(w);
      DeviceBuffer<float> d_factor(factor);
      DeviceBuffer<uint8_t> d_mask(rows * cols);
      NmMaskParams d = p;
      d.w = d_w.get();
      d.column_factor = with_factor ? d_factor.get() : nullptr;
      d.mask = d_mask.get();
      sparsity::nm_mask_cuda(d, nullptr);
      EXPECT_TRUE(test::bitwise_equal(d_mask.to_host(), mask));
    }
  }
}

TEST(NmMaskCuda, Float32MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare_masks<float>(10);
}
TEST(NmMaskCuda, Float16MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare_masks<Half>(20);
}
TEST(NmMaskCuda, BFloat16MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare_masks<BFloat16>(30);
}

TEST(NmMaskCuda, ReportsNonFiniteWeights) {
  MOPT_SKIP_WITHOUT_CUDA();
  const int64_t rows = 40, cols = 128;
  for (int m : {4, 16}) {
    auto v = test::random_values(rows * cols, 5);
    DeviceBuffer<uint8_t> d_mask(rows * cols);
    DeviceBuffer<int32_t> d_found(std::vector<int32_t>{0});
    NmMaskParams p;
    p.rows = rows;
    p.cols = cols;
    p.n = 1;
    p.m = m;
    p.mask = d_mask.get();
    p.nonfinite_found = d_found.get();
    {
      DeviceBuffer<float> d_w(v);
      p.w = d_w.get();
      sparsity::nm_mask_cuda(p, nullptr);
      EXPECT_EQ(d_found.to_host()[0], 0);
    }
    v[rows * cols - 1] = std::numeric_limits<float>::quiet_NaN();
    DeviceBuffer<float> d_w(v);
    p.w = d_w.get();
    sparsity::nm_mask_cuda(p, nullptr);
    EXPECT_EQ(d_found.to_host()[0], 1);
  }
}

TEST(NmMaskCuda, RejectsBadArguments) {
  MOPT_SKIP_WITHOUT_CUDA();
  NmMaskParams p;
  p.rows = 2;
  p.cols = 6;
  p.n = 2;
  p.m = 4;
  EXPECT_THROW(sparsity::nm_mask_cuda(p, nullptr), KernelError);
}

// 2:4-masked data (and sparser groups): CUDA compression equals the CPU's, decompression
// restores the CPU's dense tensor, and the invalid-group counter stays zero.
template <typename T>
void compare_2to4(uint32_t seed) {
  const int64_t rows = 96, cols = 320;
  auto v = test::random_values(rows * cols, seed);
  for (int64_t g = 0; g < rows * cols / 4; ++g) {
    const int64_t base = g * 4;
    const int64_t drop = 2 + g % 3;  // 2, 3 or 4 zeros
    for (int64_t k = 0; k < drop; ++k) v[base + (g + k) % 4] = 0.0f;
  }
  const auto dense = stored<T>(v);
  std::vector<T> values(rows * cols / 2);
  std::vector<int16_t> meta(rows * cols / 16);
  Compress2to4Params p;
  p.dense = dense.data();
  p.dtype = dtype_of<T>();
  p.rows = rows;
  p.cols = cols;
  p.values = values.data();
  p.meta = meta.data();
  sparsity::compress_2to4_cpu(p);

  DeviceBuffer<T> d_dense(dense), d_values(values.size());
  DeviceBuffer<int16_t> d_meta(meta.size());
  DeviceBuffer<int32_t> d_invalid(std::vector<int32_t>{0});
  Compress2to4Params d = p;
  d.dense = d_dense.get();
  d.values = d_values.get();
  d.meta = d_meta.get();
  d.invalid_groups = d_invalid.get();
  sparsity::compress_2to4_cuda(d, nullptr);
  EXPECT_TRUE(test::bitwise_equal(d_values.to_host(), values));
  EXPECT_TRUE(test::bitwise_equal(d_meta.to_host(), meta));
  EXPECT_EQ(d_invalid.to_host()[0], 0);

  std::vector<T> back(rows * cols);
  Decompress2to4Params q;
  q.values = values.data();
  q.meta = meta.data();
  q.dtype = dtype_of<T>();
  q.rows = rows;
  q.cols = cols;
  q.dense = back.data();
  sparsity::decompress_2to4_cpu(q);
  DeviceBuffer<T> d_back(back.size());
  Decompress2to4Params e = q;
  e.values = d_values.get();
  e.meta = d_meta.get();
  e.dense = d_back.get();
  e.invalid_groups = d_invalid.get();
  sparsity::decompress_2to4_cuda(e, nullptr);
  EXPECT_TRUE(test::bitwise_equal(d_back.to_host(), back));
  EXPECT_EQ(d_invalid.to_host()[0], 0);
}

TEST(Compress2to4Cuda, Float32MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare_2to4<float>(40);
}
TEST(Compress2to4Cuda, Float16MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare_2to4<Half>(50);
}
TEST(Compress2to4Cuda, BFloat16MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare_2to4<BFloat16>(60);
}

// Groups with more than 2 nonzeros and codes no encoder writes are counted, not thrown.
TEST(Compress2to4Cuda, CountsInvalidGroups) {
  MOPT_SKIP_WITHOUT_CUDA();
  const int64_t rows = 2, cols = 32;
  std::vector<float> dense(rows * cols, 0.0f);
  for (int i = 0; i < 3; ++i) dense[4 + i] = 1.0f;     // row 0, group 1: 3 nonzeros
  for (int i = 0; i < 4; ++i) dense[cols + i] = 2.0f;  // row 1, group 0: 4 nonzeros
  DeviceBuffer<float> d_dense(dense), d_values(rows * cols / 2);
  DeviceBuffer<int16_t> d_meta(rows * cols / 16);
  DeviceBuffer<int32_t> d_invalid(std::vector<int32_t>{0});
  Compress2to4Params p;
  p.dense = d_dense.get();
  p.rows = rows;
  p.cols = cols;
  p.values = d_values.get();
  p.meta = d_meta.get();
  p.invalid_groups = d_invalid.get();
  sparsity::compress_2to4_cuda(p, nullptr);
  EXPECT_EQ(d_invalid.to_host()[0], 2);

  // Codes (1, 0) and (3, 3) in the first word: 2 invalid groups.
  DeviceBuffer<int16_t> d_bad(std::vector<int16_t>{static_cast<int16_t>(0x8F81u), 0x0000});
  DeviceBuffer<int32_t> d_count(std::vector<int32_t>{0});
  DeviceBuffer<float> d_out(32);
  Decompress2to4Params q;
  q.values = d_values.get();
  q.meta = d_bad.get();
  q.rows = 1;
  q.cols = 32;
  q.dense = d_out.get();
  q.invalid_groups = d_count.get();
  sparsity::decompress_2to4_cuda(q, nullptr);
  // 0x8F81: codes 0x1 (1,0) bad, 0x8 (0,2) ok, 0xF (3,3) bad, 0x8 ok; the second word is all
  // 0x0 (0,0): 4 more.
  EXPECT_EQ(d_count.to_host()[0], 6);
}

}  // namespace
}  // namespace mopt::kernels
