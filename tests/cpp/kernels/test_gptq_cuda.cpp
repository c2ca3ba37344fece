// CUDA GPTQ column loop against its CPU twin, bit for bit. Compiled whenever nvcc exists; skipped
// when no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "cuda_test_util.h"
#include "gptq/gptq.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using test::DeviceBuffer;

struct Setup {
  Format format;
  int64_t group;  // 0: whole rows
  bool at_start;
  bool permuted;
  bool asymmetric = false;  // kInt with zero points
};

void compare(const Setup& s) {
  const int64_t rows = 70, cols = 96, block = 32;
  std::vector<float> w = test::random_values(rows * cols, 7);
  std::vector<float> u(cols * cols, 0.0f);
  const auto r = test::random_values(cols * cols, 8, 0.1f);
  for (int64_t i = 0; i < cols; ++i) {
    u[i * cols + i] = 0.7f + 0.03f * static_cast<float>(i % 11);
    for (int64_t k = i + 1; k < cols; ++k) u[i * cols + k] = r[i * cols + k];
  }
  std::vector<int32_t> index(cols);
  std::iota(index.begin(), index.end(), 0);
  if (s.permuted) std::reverse(index.begin(), index.end());
  const int64_t group = s.group > 0 ? s.group : cols;
  const int64_t count = (cols + group - 1) / group;
  gptq::QuantSpec spec;
  spec.format = s.format;
  spec.num_bits = 4;
  spec.nvfp4_tensor_scale = 8.0f / (6.0f * 448.0f);
  spec.asymmetric = s.asymmetric;
  spec.full_range = s.asymmetric;

  std::vector<float> param(rows * count, 0.0f), loss(rows, 0.0f), zero(rows * count, 0.0f);
  DeviceBuffer<float> d_zero(zero);
  std::vector<int32_t> pin(rows * count, -1);
  DeviceBuffer<float> d_w(w), d_u(u), d_param(param), d_loss(loss);
  DeviceBuffer<int32_t> d_index(index), d_pin(pin);
  DeviceBuffer<float> d_err(rows * block);
  std::vector<float> err(rows * block);
  gptq::Groups g_cpu{group, count, param.data(), pin.data()};
  gptq::Groups g_gpu{group, count, d_param.get(), d_pin.get()};
  if (s.asymmetric) {
    g_cpu.zero = zero.data();
    g_gpu.zero = d_zero.get();
  }
  if (!s.at_start) {
    gptq::GroupParamsArgs ga{w.data(), rows, cols, cols, spec, g_cpu};
    gptq::gptq_group_params_cpu(ga);
    gptq::GroupParamsArgs gd{d_w.get(), rows, cols, cols, spec, g_gpu};
    gptq::gptq_group_params_cuda(gd, nullptr);
  }
  for (int64_t c0 = 0; c0 < cols; c0 += block) {
    gptq::BlockArgs a;
    a.rows = rows;
    a.ldw = cols;
    a.col0 = c0;
    a.ncols = std::min(block, cols - c0);
    a.ldh = cols;
    a.groups_at_start = s.at_start;
    a.spec = spec;
    gptq::BlockArgs c = a, d = a;
    c.w = w.data();
    c.hinv = u.data();
    c.err = err.data();
    c.col_index = index.data();
    c.groups = g_cpu;
    c.row_loss = loss.data();
    d.w = d_w.get();
    d.hinv = d_u.get();
    d.err = d_err.get();
    d.col_index = d_index.get();
    d.groups = g_gpu;
    d.row_loss = d_loss.get();
    gptq::gptq_block_cpu(c);
    gptq::gptq_block_cuda(d, nullptr);
    EXPECT_EQ(d_err.to_host(), err);
  }
  EXPECT_EQ(d_w.to_host(), w);
  EXPECT_EQ(d_param.to_host(), param);
  EXPECT_EQ(d_loss.to_host(), loss);
  if (s.format == Format::kNVFP4) EXPECT_EQ(d_pin.to_host(), pin);
  if (s.asymmetric) EXPECT_EQ(d_zero.to_host(), zero);
}

TEST(GptqCuda, AsymmetricIntMatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare({Format::kInt, 16, true, false, true});
  compare({Format::kInt, 32, false, true, true});
  compare({Format::kInt, 0, false, false, true});
}

TEST(GptqCuda, PerRowIntMatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare({Format::kInt, 0, false, false});
}

TEST(GptqCuda, IntBlocksAtStartMatchCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare({Format::kInt, 16, true, false});
}

TEST(GptqCuda, StaticGroupsActOrderMatchCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare({Format::kInt, 32, false, true});
}

TEST(GptqCuda, Nvfp4MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare({Format::kNVFP4, 16, true, false});
  compare({Format::kNVFP4, 16, false, true});
}

}  // namespace
}  // namespace mopt::kernels

namespace mopt::kernels {
namespace {

// SparseGPT's column loop on CUDA against its CPU twin, bit for bit (masks, weights, errors).
void compare_prune(int n, int m) {
  MOPT_SKIP_WITHOUT_CUDA();
  const int64_t rows = 37, cols = 64, block = 16;
  std::vector<float> w = test::random_values(rows * cols, 21);
  std::vector<float> u(cols * cols, 0.0f);
  const auto r = test::random_values(cols * cols, 22, 0.1f);
  for (int64_t i = 0; i < cols; ++i) {
    u[i * cols + i] = 0.6f + 0.05f * static_cast<float>(i % 5);
    for (int64_t k = i + 1; k < cols; ++k) u[i * cols + k] = r[i * cols + k];
  }
  std::vector<float> err(rows * block), loss(rows, 0.0f);
  std::vector<uint8_t> mask(rows * cols, 0);
  DeviceBuffer<float> d_w(w), d_u(u), d_err(rows * block), d_loss(loss);
  DeviceBuffer<uint8_t> d_mask(mask);
  for (int64_t c0 = 0; c0 < cols; c0 += block) {
    gptq::PruneBlockArgs a;
    a.rows = rows;
    a.ldw = cols;
    a.col0 = c0;
    a.ncols = block;
    a.ldh = cols;
    a.n = n;
    a.m = m;
    gptq::PruneBlockArgs c = a, d = a;
    c.w = w.data();
    c.hinv = u.data();
    c.err = err.data();
    c.mask = mask.data();
    c.row_loss = loss.data();
    d.w = d_w.get();
    d.hinv = d_u.get();
    d.err = d_err.get();
    d.mask = d_mask.get();
    d.row_loss = d_loss.get();
    gptq::sparsegpt_block_cpu(c);
    gptq::sparsegpt_block_cuda(d, nullptr);
    EXPECT_EQ(d_err.to_host(), err);
  }
  EXPECT_EQ(d_w.to_host(), w);
  EXPECT_EQ(d_mask.to_host(), mask);
  EXPECT_EQ(d_loss.to_host(), loss);
}

TEST(SparseGptCuda, TwoFourMatchesCpu) { compare_prune(2, 4); }
TEST(SparseGptCuda, FourEightMatchesCpu) { compare_prune(4, 8); }

}  // namespace
}  // namespace mopt::kernels
