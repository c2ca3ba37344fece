// CPU SparseGPT column loop (kernels/gptq, sparsegpt_block_cpu) against a naive float64
// transcription of the published algorithm (Frantar & Alistarh 2023, Algorithm 1 with N:M
// groups), over several blocks with the lazy update written out here, and the argument checks.
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

std::vector<float> random_upper(int64_t n, uint32_t seed) {
  auto r = test::random_values(n * n, seed, 0.15f);
  std::vector<float> u(n * n, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    u[i * n + i] = 0.5f + 0.07f * static_cast<float>(i % 7);
    for (int64_t k = i + 1; k < n; ++k) u[i * n + k] = std::clamp(r[i * n + k], -0.3f, 0.3f);
  }
  return u;
}

// Reference: per row, at the first column of each group of m, keep the n weights with the
// largest w^2 / u_jj^2 (sort, ties to the lower index); zero the others; propagate (w - q) / u_jj
// along row j of U to every later column (no blocking: the blocked loop must equal it).
void ref_prune(std::vector<double>& w, std::vector<uint8_t>& mask, const std::vector<float>& u,
               int64_t rows, int64_t cols, int n, int m) {
  for (int64_t r = 0; r < rows; ++r) {
    double* wr = w.data() + r * cols;
    std::vector<bool> keep(cols, false);
    for (int64_t j = 0; j < cols; ++j) {
      if (j % m == 0) {
        std::vector<int> idx(m);
        std::iota(idx.begin(), idx.end(), 0);
        auto err = [&](int t) {
          const double d = u[(j + t) * cols + j + t];
          return wr[j + t] * wr[j + t] / (d * d);
        };
        std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return err(a) > err(b); });
        for (int t = 0; t < n; ++t) keep[j + idx[t]] = true;
      }
      const double x = wr[j];
      const double q = keep[j] ? x : 0.0;
      const double e = (x - q) / u[j * cols + j];
      wr[j] = q;
      mask[r * cols + j] = keep[j] ? 1 : 0;
      for (int64_t k = j + 1; k < cols; ++k) wr[k] -= e * u[j * cols + k];
    }
  }
}

struct Case {
  int64_t rows, cols, block;
  int n, m;
};

void run_case(const Case& c, uint32_t seed) {
  std::vector<float> w = test::random_values(c.rows * c.cols, seed);
  const std::vector<float> u = random_upper(c.cols, seed + 1);
  std::vector<double> ref(w.begin(), w.end());
  std::vector<uint8_t> ref_mask(c.rows * c.cols, 0), mask(c.rows * c.cols, 7);
  ref_prune(ref, ref_mask, u, c.rows, c.cols, c.n, c.m);

  std::vector<float> err(c.rows * c.block), loss(c.rows, 0.0f);
  for (int64_t c0 = 0; c0 < c.cols; c0 += c.block) {
    gptq::PruneBlockArgs a;
    a.w = w.data();
    a.rows = c.rows;
    a.ldw = c.cols;
    a.col0 = c0;
    a.ncols = std::min(c.block, c.cols - c0);
    a.hinv = u.data();
    a.ldh = c.cols;
    a.err = err.data();
    a.mask = mask.data();
    a.n = c.n;
    a.m = c.m;
    a.row_loss = loss.data();
    gptq::sparsegpt_block_cpu(a);
    // the lazy update of the later columns: w[:, c1:] -= err @ U[c0:c1, c1:]
    for (int64_t r = 0; r < c.rows; ++r) {
      for (int64_t k = c0 + a.ncols; k < c.cols; ++k) {
        float s = 0.0f;
        for (int64_t j = 0; j < a.ncols; ++j) s += err[r * a.ncols + j] * u[(c0 + j) * c.cols + k];
        w[r * c.cols + k] -= s;
      }
    }
  }
  EXPECT_EQ(mask, ref_mask);
  double max_ref = 0.0;
  for (double v : ref) max_ref = std::max(max_ref, std::abs(v));
  for (int64_t i = 0; i < c.rows * c.cols; ++i) {
    ASSERT_NEAR(w[i], ref[i], 1e-4 * std::max(1.0, max_ref)) << "element " << i;
    if (!ref_mask[i]) ASSERT_EQ(w[i], 0.0f) << "pruned element " << i;
  }
  // every group keeps exactly n
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t g = 0; g < c.cols; g += c.m) {
      int kept = 0;
      for (int t = 0; t < c.m; ++t) kept += mask[r * c.cols + g + t];
      ASSERT_EQ(kept, c.n);
    }
  }
  for (float l : loss) EXPECT_GE(l, 0.0f);
}

TEST(SparseGptKernel, TwoFourOneBlock) { run_case({9, 32, 32, 2, 4}, 11); }
TEST(SparseGptKernel, TwoFourSeveralBlocks) { run_case({13, 64, 16, 2, 4}, 12); }
TEST(SparseGptKernel, FourEightAndOneFour) {
  run_case({7, 48, 24, 4, 8}, 13);
  run_case({5, 40, 8, 1, 4}, 14);
}
TEST(SparseGptKernel, WideGroup) { run_case({4, 64, 32, 16, 32}, 15); }

TEST(SparseGptKernel, Avx2AndBaselineLoopsGiveTheSameBits) {
  const int64_t rows = 23, cols = 64;
  const std::vector<float> w0 = test::random_values(rows * cols, 41);
  const std::vector<float> u = random_upper(cols, 42);
  std::vector<float> w_out[2], err_out[2], loss_out[2];
  std::vector<uint8_t> mask_out[2];
  for (const bool avx2 : {false, true}) {
    set_cpu_avx2_allowed(avx2);
    std::vector<float> w = w0, err(rows * cols), loss(rows, 0.0f);
    std::vector<uint8_t> mask(rows * cols, 7);
    gptq::PruneBlockArgs a;
    a.w = w.data();
    a.rows = rows;
    a.ldw = cols;
    a.col0 = 0;
    a.ncols = cols;
    a.hinv = u.data();
    a.ldh = cols;
    a.err = err.data();
    a.mask = mask.data();
    a.row_loss = loss.data();
    gptq::sparsegpt_block_cpu(a);
    w_out[avx2] = w;
    err_out[avx2] = err;
    loss_out[avx2] = loss;
    mask_out[avx2] = mask;
  }
  set_cpu_avx2_allowed(true);
  EXPECT_EQ(w_out[0], w_out[1]);
  EXPECT_EQ(err_out[0], err_out[1]);
  EXPECT_EQ(loss_out[0], loss_out[1]);
  EXPECT_EQ(mask_out[0], mask_out[1]);
}

TEST(SparseGptKernel, RejectsBadArguments) {
  std::vector<float> w(32, 1.0f), u(64, 0.0f), err(32);
  std::vector<uint8_t> mask(32);
  for (int i = 0; i < 8; ++i) u[i * 8 + i] = 1.0f;
  gptq::PruneBlockArgs a;
  a.w = w.data();
  a.rows = 4;
  a.ldw = 8;
  a.ncols = 8;
  a.hinv = u.data();
  a.ldh = 8;
  a.err = err.data();
  a.mask = mask.data();
  a.n = 3;
  a.m = 2;
  EXPECT_THROW(gptq::sparsegpt_block_cpu(a), KernelError);  // n > m
  a.n = 2;
  a.m = 4;
  a.col0 = 2;
  a.ncols = 4;
  EXPECT_THROW(gptq::sparsegpt_block_cpu(a), KernelError);  // block not on a group boundary
  a.col0 = 0;
  a.ncols = 8;
  a.mask = nullptr;
  EXPECT_THROW(gptq::sparsegpt_block_cpu(a), KernelError);
}

}  // namespace
}  // namespace mopt::kernels
