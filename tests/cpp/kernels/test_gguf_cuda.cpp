// CUDA GGUF kernels against their CPU twins, bit for bit (values and packed bytes). Compiled
// whenever nvcc exists; skipped when no GPU is present.
#include <gtest/gtest.h>

#include <vector>

#include "cuda_test_util.h"
#include "gguf/gguf.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using gguf::GgufType;

class GgufCuda : public ::testing::TestWithParam<GgufType> {};

TEST_P(GgufCuda, MatchesCpuBitForBit) {
  MOPT_SKIP_WITHOUT_CUDA();
  const GgufType type = GetParam();
  const int64_t rows = 37, row_len = 768;
  const auto x = test::random_values(rows * row_len, 3 + static_cast<uint32_t>(type), 0.05f);
  const int64_t nbytes = gguf::gguf_packed_bytes(type, rows, row_len);
  std::vector<float> y_cpu(x.size());
  std::vector<uint8_t> packed_cpu(nbytes);
  gguf::GgufParams p;
  p.x = x.data();
  p.y = y_cpu.data();
  p.packed = packed_cpu.data();
  p.rows = rows;
  p.row_len = row_len;
  p.type = type;
  gguf::gguf_quant_cpu(p);

  test::DeviceBuffer<float> dx(x), dy(x.size());
  test::DeviceBuffer<uint8_t> dpacked(static_cast<size_t>(nbytes));
  p.x = dx.get();
  p.y = dy.get();
  p.packed = dpacked.get();
  gguf::gguf_quant_cuda(p, nullptr);
  EXPECT_TRUE(test::bitwise_equal(dy.to_host(), y_cpu));
  EXPECT_TRUE(test::bitwise_equal(dpacked.to_host(), packed_cpu));
}

INSTANTIATE_TEST_SUITE_P(Types, GgufCuda,
                         ::testing::Values(GgufType::kQ8_0, GgufType::kQ4_0, GgufType::kQ5_0,
                                           GgufType::kQ4_K));

}  // namespace
}  // namespace mopt::kernels
