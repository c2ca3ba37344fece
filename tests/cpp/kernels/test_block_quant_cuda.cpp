// CUDA block-format kernels (NVFP4, MX, NF4) against their CPU twins, bit for bit. Compiled
// whenever nvcc exists; skipped when no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "block_quant/block_quant.h"
#include "common/dtype.h"
#include "cuda_test_util.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using block_quant::BlockQuantParams;
using test::DeviceBuffer;

struct Case {
  Format format;
  int64_t rows, row_len, block;
  int e = 2, m = 1;         // MX element format
  int64_t scale_block = 0;  // NF4 double quantization
  bool static_amax = false;
};

template <typename T>
void compare(const Case& c, size_t misalign) {
  const int64_t numel = c.rows * c.row_len;
  auto xf = test::random_values(numel, 7 + static_cast<uint32_t>(numel + c.block));
  // Edge values: a zero block, a NaN, an infinity, tiny magnitudes.
  if (numel > 64) {
    for (int i = 0; i < 16; ++i) xf[i] = 0.0f;
    xf[40] = std::numeric_limits<float>::quiet_NaN();
    xf[numel - 3] = std::numeric_limits<float>::infinity();
    for (int64_t i = 48; i < 64; ++i) xf[i] *= 1e-30f;
  }
  std::vector<T> x(numel);
  for (int64_t i = 0; i < numel; ++i) store_float(&x[i], xf[i]);
  const int64_t nb = (c.row_len + c.block - 1) / c.block;
  std::vector<float> block_amax(c.rows * nb);
  for (size_t i = 0; i < block_amax.size(); ++i)
    block_amax[i] = (i % 7 == 3) ? 0.0f : 0.2f * (i % 9);
  float global = 0.0f;
  for (float v : xf) global = std::isfinite(v) ? std::max(global, std::fabs(v)) : global;
  global *= 0.8f;

  BlockQuantParams p;
  p.format = c.format;
  p.dtype = std::is_same_v<T, float>  ? DType::kFloat32
            : std::is_same_v<T, Half> ? DType::kFloat16
                                      : DType::kBFloat16;
  p.rows = c.rows;
  p.row_len = c.row_len;
  p.block_size = c.block;
  p.exponent_bits = c.e;
  p.mantissa_bits = c.m;
  p.scale_block_size = c.scale_block;
  std::vector<T> y_cpu(numel);
  p.x = x.data();
  p.y = y_cpu.data();
  p.global_amax = &global;
  p.block_amax = c.static_amax ? block_amax.data() : nullptr;
  block_quant::block_quant_cpu(p);

  DeviceBuffer<T> dx(x, misalign), dy(numel, misalign);
  DeviceBuffer<float> dglobal(std::vector<float>{global}), dblock(block_amax);
  DeviceBuffer<char> ws(block_quant::block_quant_workspace_bytes(p) + 16);
  p.x = dx.get();
  p.y = dy.get();
  p.global_amax = dglobal.get();
  p.block_amax = c.static_amax ? dblock.get() : nullptr;
  p.workspace = ws.get();
  block_quant::block_quant_cuda(p, nullptr);
  EXPECT_TRUE(test::bitwise_equal(dy.to_host(), y_cpu))
      << "format " << static_cast<int>(c.format) << " rows " << c.rows << " len " << c.row_len
      << " block " << c.block << " misalign " << misalign;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {Format::kNVFP4, 512, 1024, 16},
      {Format::kNVFP4, 77, 100, 16},  // partial blocks: scalar kernel
      {Format::kNVFP4, 64, 256, 32},
      {Format::kNVFP4, 64, 256, 16, 2, 1, 0, true},
      {Format::kNVFP4, 1, 1 << 20, 16},
      {Format::kMX, 256, 512, 32, 4, 3},
      {Format::kMX, 256, 512, 32, 5, 2},
      {Format::kMX, 256, 512, 32, 3, 2},
      {Format::kMX, 256, 512, 32, 2, 3},
      {Format::kMX, 256, 512, 32, 2, 1},
      {Format::kMX, 256, 512, 32, 0, 7},
      {Format::kMX, 33, 70, 32, 2, 1},
      {Format::kMX, 64, 256, 32, 4, 3, 0, true},
      {Format::kNF4, 256, 512, 64},
      {Format::kNF4, 256, 512, 64, 2, 1, 256},
      {Format::kNF4, 100, 300, 64, 2, 1, 256},  // partial blocks and groups
      {Format::kNF4, 512, 4096, 64, 2, 1, -1},  // one group over 32768 scales
      {Format::kNF4, 64, 256, 64, 2, 1, 256, true},
  };
  return all;
}

template <typename T>
void all_cases() {
  for (const auto& c : cases()) {
    for (size_t mis : {0, 1}) compare<T>(c, mis);
  }
}

TEST(BlockQuantCuda, MatchesCpuFloat) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<float>();
}

TEST(BlockQuantCuda, MatchesCpuHalf) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<Half>();
}

TEST(BlockQuantCuda, MatchesCpuBFloat16) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<BFloat16>();
}

TEST(BlockQuantCuda, NF4DoubleQuantNeedsWorkspace) {
  MOPT_SKIP_WITHOUT_CUDA();
  DeviceBuffer<float> x(std::vector<float>(128, 1.0f)), y(128);
  BlockQuantParams p;
  p.format = Format::kNF4;
  p.x = x.get();
  p.y = y.get();
  p.rows = 1;
  p.row_len = 128;
  p.block_size = 64;
  p.scale_block_size = 256;
  EXPECT_THROW(block_quant::block_quant_cuda(p, nullptr), KernelError);
}

}  // namespace
}  // namespace mopt::kernels
