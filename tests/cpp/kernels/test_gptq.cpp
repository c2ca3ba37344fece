// CPU GPTQ column loop against a naive float64 transcription of the published algorithm (one
// block), the NVFP4 top-code pin, and the argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/cpu_isa.h"
#include "common/macros.h"
#include "gptq/gptq.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using gptq::BlockArgs;
using gptq::Groups;

// Upper-triangular stand-in for the Cholesky factor of H^-1: positive diagonal, small
// off-diagonal couplings.
std::vector<float> random_upper(int64_t n, uint32_t seed) {
  auto r = test::random_values(n * n, seed, 0.15f);
  std::vector<float> u(n * n, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    u[i * n + i] = 0.6f + 0.05f * static_cast<float>(i % 9);
    for (int64_t k = i + 1; k < n; ++k) u[i * n + k] = std::clamp(r[i * n + k], -0.3f, 0.3f);
  }
  return u;
}

struct Problem {
  int64_t rows, cols;
  std::vector<float> w, u;
  std::vector<int32_t> index;
};

Problem make_problem(int64_t rows, int64_t cols, uint32_t seed) {
  Problem p{rows, cols, test::random_values(rows * cols, seed), random_upper(cols, seed + 1), {}};
  p.index.resize(cols);
  std::iota(p.index.begin(), p.index.end(), 0);
  return p;
}

// Reference: per row, quantize column j with the group's amax (from the updated weights at the
// group's first column when `group` > 0, else from the original row), propagate (w - q) / u_jj.
std::vector<double> ref_block(const Problem& p, int bits, int64_t group) {
  std::vector<double> out(p.rows * p.cols);
  for (int64_t r = 0; r < p.rows; ++r) {
    std::vector<double> w(p.w.begin() + r * p.cols, p.w.begin() + (r + 1) * p.cols);
    double amax = 0.0;
    for (double v : w) amax = std::max(amax, std::abs(v));
    for (int64_t j = 0; j < p.cols; ++j) {
      if (group > 0 && j % group == 0) {
        amax = 0.0;
        for (int64_t k = j; k < std::min(j + group, p.cols); ++k)
          amax = std::max(amax, std::abs(w[k]));
      }
      const double q = test::ref_fake_quant_int(static_cast<float>(w[j]), static_cast<float>(amax),
                                                bits, false, false);
      const double e = (w[j] - q) / p.u[j * p.cols + j];
      out[r * p.cols + j] = q;
      for (int64_t k = j + 1; k < p.cols; ++k) w[k] -= e * p.u[j * p.cols + k];
    }
  }
  return out;
}

BlockArgs block_args(Problem& p, std::vector<float>& err, Groups g) {
  BlockArgs a;
  a.w = p.w.data();
  a.rows = p.rows;
  a.ldw = p.cols;
  a.col0 = 0;
  a.ncols = p.cols;
  a.hinv = p.u.data();
  a.ldh = p.cols;
  a.err = err.data();
  a.col_index = p.index.data();
  a.groups = g;
  return a;
}

void expect_close_to_reference(const std::vector<float>& got, const std::vector<double>& ref,
                               double step) {
  int64_t exact = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    // fp32 against fp64 propagation may move a value across a rounding tie: one step at most.
    EXPECT_LE(std::abs(got[i] - ref[i]), step * 1.0001 + 1e-6) << "element " << i;
    exact += std::abs(got[i] - ref[i]) <= 1e-5 * step;
  }
  EXPECT_GE(exact, static_cast<int64_t>(0.99 * ref.size()));
}

TEST(GptqKernel, PerRowIntMatchesReference) {
  Problem p = make_problem(37, 48, 101);
  const Problem original = p;
  std::vector<float> param(p.rows), err(p.rows * p.cols), loss(p.rows, 0.0f);
  gptq::GroupParamsArgs ga;
  ga.w = p.w.data();
  ga.rows = p.rows;
  ga.cols = p.cols;
  ga.ld = p.cols;
  ga.groups = Groups{p.cols, 1, param.data(), nullptr};
  gptq::gptq_group_params_cpu(ga);
  BlockArgs a = block_args(p, err, ga.groups);
  a.spec.num_bits = 4;
  a.row_loss = loss.data();
  gptq::gptq_block_cpu(a);
  double max_amax = 0;
  for (float v : param) max_amax = std::max<double>(max_amax, v);
  expect_close_to_reference(p.w, ref_block(original, 4, 0), max_amax / 7);
  for (int64_t r = 0; r < p.rows; ++r) {
    double l = 0;
    for (int64_t j = 0; j < p.cols; ++j) l += 0.5 * err[r * p.cols + j] * err[r * p.cols + j];
    EXPECT_NEAR(loss[r], l, 1e-4 * (1 + l));
  }
}

TEST(GptqKernel, GroupsFromUpdatedWeightsMatchReference) {
  Problem p = make_problem(29, 64, 202);
  const Problem original = p;
  const int64_t group = 16;
  std::vector<float> param(p.rows * 4), err(p.rows * p.cols);
  BlockArgs a = block_args(p, err, Groups{group, 4, param.data(), nullptr});
  a.spec.num_bits = 3;
  a.groups_at_start = true;
  gptq::gptq_block_cpu(a);
  double max_amax = 0;
  for (float v : param) max_amax = std::max<double>(max_amax, v);
  expect_close_to_reference(p.w, ref_block(original, 3, group), max_amax / 3);
  // Every parameter is the amax of the group as it was when the loop reached it: no output
  // exceeds it.
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t j = 0; j < p.cols; ++j) {
      EXPECT_LE(std::abs(p.w[r * p.cols + j]), param[r * 4 + j / group] * (1 + 1e-6));
    }
  }
}

TEST(GptqKernel, Avx2AndBaselineLoopsGiveTheSameBits) {
  // Groups opening at their first column, a permuted column order (act_order) and a row count
  // that splits unevenly: the AVX2 instantiation must reproduce the baseline bit for bit.
  Problem p = make_problem(37, 64, 303);
  std::reverse(p.index.begin(), p.index.begin() + 16);
  std::vector<float> w_out[2], err_out[2], param_out[2], loss_out[2];
  for (const bool avx2 : {false, true}) {
    set_cpu_avx2_allowed(avx2);
    Problem run = p;
    std::vector<float> param(run.rows * 4), err(run.rows * run.cols), loss(run.rows, 0.0f);
    BlockArgs a = block_args(run, err, Groups{16, 4, param.data(), nullptr});
    a.spec.num_bits = 4;
    a.groups_at_start = true;
    a.row_loss = loss.data();
    gptq::gptq_block_cpu(a);
    w_out[avx2] = run.w;
    err_out[avx2] = err;
    param_out[avx2] = param;
    loss_out[avx2] = loss;
  }
  set_cpu_avx2_allowed(true);
  EXPECT_EQ(w_out[0], w_out[1]);
  EXPECT_EQ(err_out[0], err_out[1]);
  EXPECT_EQ(param_out[0], param_out[1]);
  EXPECT_EQ(loss_out[0], loss_out[1]);
}

TEST(GptqKernel, Nvfp4PinKeepsTheBlockScale) {
  // One block whose largest element (last column) is pushed from 6 s1 to 4.5 s1 by the errors
  // of the 15 columns before it: without the pin it rounds to 4 and the block amax of the result
  // no longer reproduces s1; with the pin it is quantized to the top code 6.
  for (bool use_pin : {false, true}) {
    Problem p{1, 16, std::vector<float>(16, 0.7f), std::vector<float>(16 * 16, 0.0f), {}};
    p.w[15] = 6.0f;
    for (int64_t j = 0; j < 16; ++j) p.u[j * 16 + j] = 1.0f;
    for (int64_t j = 0; j < 15; ++j) p.u[j * 16 + 15] = 0.5f;
    p.index.resize(16);
    std::iota(p.index.begin(), p.index.end(), 0);
    float param = 0;
    int32_t pin = 0;
    std::vector<float> err(16);
    BlockArgs a = block_args(p, err, Groups{16, 1, &param, use_pin ? &pin : nullptr});
    a.spec.format = Format::kNVFP4;
    a.spec.nvfp4_tensor_scale = 1.0f / 64.0f;  // s1 = e4m3(6 / (6 / 64)) / 64 = 1
    a.groups_at_start = true;
    gptq::gptq_block_cpu(a);
    EXPECT_EQ(param, 1.0f);
    for (int64_t j = 0; j < 15; ++j) EXPECT_EQ(p.w[j], 0.5f);
    EXPECT_EQ(p.w[15], use_pin ? 6.0f : 4.0f);
  }
}

TEST(GptqKernel, Nvfp4BlocksReachTheirTopCode) {
  Problem p = make_problem(33, 48, 303);
  for (int64_t j = 0; j < 16; ++j) p.w[5 * p.cols + j] = 0.0f;  // one all-zero block
  const int64_t group = 16, count = 3;
  std::vector<float> param(p.rows * count), err(p.rows * p.cols);
  std::vector<int32_t> pin(p.rows * count);
  BlockArgs a = block_args(p, err, Groups{group, count, param.data(), pin.data()});
  a.spec.format = Format::kNVFP4;
  float amax = 0;
  for (float v : p.w) amax = std::max(amax, std::abs(v));
  a.spec.nvfp4_tensor_scale = amax / (6.0f * 448.0f);
  a.groups_at_start = true;
  gptq::gptq_block_cpu(a);
  const std::vector<double> e2m1 = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t k = 0; k < count; ++k) {
      const float s1 = param[r * count + k];
      EXPECT_EQ(pin[r * count + k], -1);
      double top = 0;
      for (int64_t j = k * group; j < (k + 1) * group; ++j) {
        const double code = std::abs(p.w[r * p.cols + j]) / (s1 == 0 ? 1.0 : s1);
        const bool on_grid = std::any_of(e2m1.begin(), e2m1.end(),
                                         [&](double v) { return std::abs(code - v) < 1e-5; });
        EXPECT_TRUE(on_grid) << "row " << r << " col " << j << " code " << code;
        top = std::max(top, code);
      }
      if (r == 5 && k == 0) {
        EXPECT_EQ(s1, 0.0f);  // the all-zero block stays zero
        EXPECT_EQ(top, 0.0);
      } else {
        EXPECT_NEAR(top, 6.0, 1e-5) << "row " << r << " block " << k;
      }
    }
  }
}

TEST(GptqKernel, ChecksArguments) {
  Problem p = make_problem(4, 20, 404);
  std::vector<float> param(4 * 3), err(4 * 20);
  BlockArgs a = block_args(p, err, Groups{8, 3, param.data(), nullptr});
  a.groups_at_start = true;
  a.col0 = 4;  // a group would start before the block
  a.ncols = 8;
  EXPECT_THROW(gptq::gptq_block_cpu(a), KernelError);
  a.col0 = 0;
  a.groups.count = 2;  // does not cover 20 columns
  EXPECT_THROW(gptq::gptq_block_cpu(a), KernelError);
  a.groups.count = 3;
  a.spec.num_bits = 1;
  EXPECT_THROW(gptq::gptq_block_cpu(a), KernelError);
  a.spec.num_bits = 4;
  a.spec.format = Format::kNVFP4;
  a.spec.nvfp4_tensor_scale = -1.0f;
  EXPECT_THROW(gptq::gptq_block_cpu(a), KernelError);
}

}  // namespace
}  // namespace mopt::kernels
