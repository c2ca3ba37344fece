// The GPTQ solver against a naive float64 implementation of the published algorithm written
// here (plain vectors, own Cholesky and rounding), plus its fixed-point property, the RTN limit,
// the Hessian accumulator and the error paths.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "mopt/algorithms/gptq.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {
namespace {

// A quantizer config from its JSON (the typed C++ API takes configs, not JSON).
QuantizerAttributeConfig cfg_of(const std::string& json) {
  return QuantizerAttributeConfig::from_json(json);
}


using Mat = std::vector<double>;  // row-major

// ----- naive float64 reference ---------------------------------------------------------------

// Lower Cholesky factor of a symmetric positive definite n x n matrix.
Mat cholesky_lower(const Mat& a, int n) {
  Mat l(n * n, 0.0);
  for (int j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (int k = 0; k < j; ++k) d -= l[j * n + k] * l[j * n + k];
    EXPECT_GT(d, 0.0);
    l[j * n + j] = std::sqrt(d);
    for (int i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (int k = 0; k < j; ++k) s -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = s / l[j * n + j];
    }
  }
  return l;
}

// Inverse of an SPD matrix through its Cholesky factor (solve A X = I column by column).
Mat spd_inverse(const Mat& a, int n) {
  const Mat l = cholesky_lower(a, n);
  Mat inv(n * n, 0.0);
  std::vector<double> y(n), x(n);
  for (int c = 0; c < n; ++c) {
    for (int i = 0; i < n; ++i) {
      double s = i == c ? 1.0 : 0.0;
      for (int k = 0; k < i; ++k) s -= l[i * n + k] * y[k];
      y[i] = s / l[i * n + i];
    }
    for (int i = n - 1; i >= 0; --i) {
      double s = y[i];
      for (int k = i + 1; k < n; ++k) s -= l[k * n + i] * x[k];
      x[i] = s / l[i * n + i];
    }
    for (int i = 0; i < n; ++i) inv[i * n + c] = x[i];
  }
  return inv;
}

struct RefSpec {
  int bits = 4;
  int group = 0;  // 0: one amax per row (from the original weight); else blocks of `group`
};

double ref_quant(double w, double amax, int bits) {
  const double maxb = (1 << (bits - 1)) - 1;
  if (amax <= std::ldexp(1.0, -24)) return 0.0;
  const double s = maxb / amax;
  return std::clamp(std::nearbyint(w * s), -maxb - 1, maxb) / s;
}

// GPTQ as published (Frantar et al., Algorithm 1 with lazy batch updates), groups computed from
// the updated weights when their first column is reached.
Mat ref_gptq(Mat w, Mat h, int rows, int cols, const RefSpec& spec, int block, double percdamp) {
  for (int j = 0; j < cols; ++j) {
    if (h[j * cols + j] == 0.0) h[j * cols + j] = 1.0;
  }
  double mean = 0.0;
  for (int j = 0; j < cols; ++j) mean += h[j * cols + j];
  mean /= cols;
  for (int j = 0; j < cols; ++j) h[j * cols + j] += percdamp * mean;
  const Mat hinv = spd_inverse(h, cols);
  const Mat lo = cholesky_lower(hinv, cols);  // U = L^T
  auto u = [&](int i, int j) { return lo[j * cols + i]; };
  std::vector<double> amax(rows, 0.0);
  if (spec.group == 0) {
    for (int r = 0; r < rows; ++r) {
      for (int j = 0; j < cols; ++j) amax[r] = std::max(amax[r], std::abs(w[r * cols + j]));
    }
  }
  Mat q(rows * cols, 0.0);
  for (int b0 = 0; b0 < cols; b0 += block) {
    const int b1 = std::min(b0 + block, cols);
    Mat err(rows * (b1 - b0), 0.0);
    for (int j = b0; j < b1; ++j) {
      for (int r = 0; r < rows; ++r) {
        if (spec.group > 0 && j % spec.group == 0) {
          amax[r] = 0.0;
          for (int k = j; k < std::min(j + spec.group, cols); ++k) {
            amax[r] = std::max(amax[r], std::abs(w[r * cols + k]));
          }
        }
        const double x = w[r * cols + j];
        const double y = ref_quant(x, amax[r], spec.bits);
        q[r * cols + j] = y;
        const double e = (x - y) / u(j, j);
        err[r * (b1 - b0) + (j - b0)] = e;
        for (int k = j + 1; k < b1; ++k) w[r * cols + k] -= e * u(j, k);
      }
    }
    for (int r = 0; r < rows; ++r) {
      for (int k = b1; k < cols; ++k) {
        double s = 0.0;
        for (int j = b0; j < b1; ++j) s += err[r * (b1 - b0) + (j - b0)] * u(j, k);
        w[r * cols + k] -= s;
      }
    }
  }
  return q;
}

// ----- helpers -------------------------------------------------------------------------------

Mat to_mat(const at::Tensor& t) {
  at::Tensor d = t.to(at::kDouble).contiguous();
  return Mat(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// Correlated inputs X = Z A with a few large channels, and the Hessian 2/n X^T X.
at::Tensor make_inputs(int64_t tokens, int64_t cols, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor z = at::randn({tokens, cols});
  at::Tensor a = at::eye(cols) + 0.3 * at::randn({cols, cols});
  at::Tensor x = at::matmul(z, a);
  x.narrow(1, 0, 3).mul_(6.0);
  return x;
}

// Layer output error sum_r (w - q)_r^T H (w - q)_r.
double output_error(const at::Tensor& w, const at::Tensor& q, const at::Tensor& h) {
  at::Tensor d = (w - q).to(at::kDouble);
  return (at::matmul(d, h.to(at::kDouble)) * d).sum().item<double>();
}

std::string int_cfg(int bits, const std::string& extra) {
  return "{\"num_bits\": " + std::to_string(bits) + ", " + extra + "}";
}

// ----- tests ---------------------------------------------------------------------------------

struct Case {
  const char* name;
  RefSpec spec;
  std::string cfg;
  int64_t block;      // ours
  int64_t ref_block;  // the reference's
};

TEST(Gptq, MatchesFloat64Reference) {
  const int64_t rows = 40, cols = 96, tokens = 400;
  const at::Tensor x = make_inputs(tokens, cols, 11);
  algorithms::GptqHessian acc(cols, "ref");
  acc.add_batch(x.narrow(0, 0, 150));
  acc.add_batch(x.narrow(0, 150, tokens - 150).reshape({10, -1, cols}));
  const at::Tensor h = acc.hessian();
  at::manual_seed(12);
  const at::Tensor w = at::randn({rows, cols}) * 0.1;
  const std::vector<Case> cases = {
      {"per-channel int4", {4, 0}, int_cfg(4, "\"axis\": 0"), 32, 32},
      {"int4 blocks of 16", {4, 16}, int_cfg(4, "\"block_sizes\": {\"-1\": 16}"), 32, 32},
      // block_size 40 is rounded up to whole quantization blocks (64)
      {"int3 blocks of 32", {3, 32}, int_cfg(3, "\"block_sizes\": {\"-1\": 32}"), 40, 64},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    algorithms::GptqOptions opt;
    opt.block_size = c.block;
    const auto res = algorithms::gptq_quantize_weight(w, h, cfg_of(c.cfg), opt, c10::nullopt, "layer");
    const Mat ref = ref_gptq(to_mat(w), to_mat(h), rows, cols, c.spec, c.ref_block, 0.01);
    const Mat ours = to_mat(res.weight);
    int64_t same = 0;
    for (size_t i = 0; i < ref.size(); ++i) same += std::abs(ours[i] - ref[i]) <= 1e-5;
    // fp32 vs fp64 may flip a rounding that sits on a tie; nothing more.
    EXPECT_GE(same, static_cast<int64_t>(0.99 * ref.size()));
    const at::Tensor ref_t = at::tensor(ref, at::kDouble).reshape({rows, cols});
    const double e_ours = output_error(w, res.weight, h);
    const double e_ref = output_error(w, ref_t, h);
    EXPECT_NEAR(e_ours, e_ref, 0.01 * e_ref);
    // Round to nearest with the same scales is clearly worse: the error propagation works.
    const at::Tensor rtn = quantize_tensor(w, c10::nullopt, c10::nullopt, c.cfg);
    EXPECT_LT(e_ours, 0.8 * output_error(w, rtn, h));
  }
}

TEST(Gptq, ActOrderMatchesPermutedReference) {
  const int64_t rows = 24, cols = 64;
  const at::Tensor x = make_inputs(300, cols, 21);
  const at::Tensor h = 2.0 / 300 * at::matmul(x.t(), x);
  at::manual_seed(22);
  const at::Tensor w = at::randn({rows, cols});
  algorithms::GptqOptions opt;
  opt.block_size = 16;
  opt.act_order = true;
  const std::string cfg = int_cfg(4, "\"axis\": 0");
  const auto res = algorithms::gptq_quantize_weight(w, h, cfg_of(cfg), opt);
  // Reference: columns by decreasing diag H (stable), GPTQ, columns back.
  const at::Tensor perm = std::get<1>(h.diagonal().sort(true, 0, true));
  const Mat ref_p =
      ref_gptq(to_mat(w.index_select(1, perm)),
               to_mat(h.index_select(0, perm).index_select(1, perm)), rows, cols, {4, 0}, 16, 0.01);
  const at::Tensor ref = at::tensor(ref_p, at::kDouble)
                             .reshape({rows, cols})
                             .index_select(1, std::get<1>(perm.sort()));
  const double same =
      ((res.weight.to(at::kDouble) - ref).abs() <= 1e-5).to(at::kDouble).mean().item<double>();
  EXPECT_GE(same, 0.99);
  const double e = output_error(w, res.weight, h), e_ref = output_error(w, ref, h);
  EXPECT_NEAR(e, e_ref, 0.01 * e_ref);
}

TEST(Gptq, ResultIsFixedPointOfWeightQuantizer) {
  const int64_t rows = 24, cols = 72;  // 72 = 4.5 blocks of 16: the last block is padded
  const at::Tensor x = make_inputs(256, cols, 31);
  const at::Tensor h = 2.0 / 256 * at::matmul(x.t(), x);
  at::manual_seed(32);
  const at::Tensor w = at::randn({rows, cols});
  const std::vector<std::string> cfgs = {
      int_cfg(4, "\"axis\": 0"),
      int_cfg(4, "\"axis\": null"),
      int_cfg(8, "\"axis\": 0, \"narrow_range\": true"),
      int_cfg(4, "\"block_sizes\": {\"-1\": 16}"),
      int_cfg(4, "\"block_sizes\": {\"-1\": null}"),
      "{\"num_bits\": [4, 3], \"axis\": 0}",
      "{\"num_bits\": [2, 1], \"block_sizes\": {\"-1\": 16}}",
      "{\"num_bits\": [2, 1], \"block_sizes\": {\"-1\": 16, \"scale_bits\": [4, 3]}}",
      "{\"num_bits\": [2, 1], \"block_sizes\": {\"-1\": 16, \"type\": \"dynamic\", "
      "\"scale_bits\": [4, 3]}}",
  };
  for (const std::string& cfg : cfgs) {
    for (bool act_order : {false, true}) {
      SCOPED_TRACE(cfg + (act_order ? " act_order" : ""));
      algorithms::GptqOptions opt;
      opt.block_size = 24;
      opt.act_order = act_order;
      const auto res = algorithms::gptq_quantize_weight(w, h, cfg_of(cfg), opt);
      const at::Tensor again = quantize_tensor(res.weight, res.amax, c10::nullopt, cfg);
      EXPECT_TRUE(at::equal(again, res.weight));
      EXPECT_FALSE(at::equal(res.weight, w));
    }
  }
}

TEST(Gptq, DynamicNvfp4KeepsItsBlockScales) {
  // H = (U^T U)^-1 for the U of the kernel test in which the element that sets the block scale is
  // pushed down to code 4: the pin keeps the result a fixed point of the dynamic quantizer.
  at::Tensor u = at::eye(16, at::kDouble);
  u.narrow(0, 0, 15).select(1, 15).fill_(0.5);
  const at::Tensor h = at::inverse(at::matmul(u.t(), u)).to(at::kFloat);
  at::Tensor w = at::full({2, 16}, 0.7f);
  w.select(1, 15).fill_(6.0f);
  const std::string cfg =
      "{\"num_bits\": [2, 1], \"block_sizes\": {\"-1\": 16, \"type\": \"dynamic\", "
      "\"scale_bits\": [4, 3]}}";
  algorithms::GptqOptions opt;
  opt.percdamp = 0.0;
  const at::Tensor tensor_amax = at::full({}, 6.0f * 448.0f / 64.0f);
  const auto res = algorithms::gptq_quantize_weight(w, h, cfg_of(cfg), opt, tensor_amax);
  EXPECT_FLOAT_EQ(res.weight[0][15].item<float>(), 6.0f);
  EXPECT_TRUE(at::equal(quantize_tensor(res.weight, res.amax, c10::nullopt, cfg), res.weight));
}

TEST(Gptq, IdentityHessianGivesRoundToNearest) {
  at::manual_seed(41);
  const at::Tensor w = at::randn({16, 48});
  const at::Tensor h = at::eye(48) * 3.0;
  for (const std::string& cfg :
       {int_cfg(4, "\"axis\": 0"), int_cfg(3, "\"block_sizes\": {\"-1\": 16}")}) {
    const auto res = algorithms::gptq_quantize_weight(w, h, cfg_of(cfg));
    EXPECT_TRUE(at::equal(res.weight, quantize_tensor(w, c10::nullopt, c10::nullopt, cfg)));
  }
}

TEST(Gptq, HessianAccumulatorStreams) {
  const at::Tensor x = make_inputs(333, 20, 51);
  algorithms::GptqHessian acc(20, "acc");
  EXPECT_THROW(acc.hessian(), c10::Error);  // no token yet
  for (int64_t i = 0; i < 333; i += 100)
    acc.add_batch(x.narrow(0, i, std::min<int64_t>(100, 333 - i)));
  acc.add_batch(at::empty({0, 20}));
  EXPECT_EQ(acc.num_samples(), 333);
  const at::Tensor xd = x.to(at::kDouble);
  const at::Tensor ref = 2.0 / 333 * at::matmul(xd.t(), xd);
  EXPECT_TRUE(at::allclose(acc.hessian().to(at::kDouble), ref, 1e-5, 1e-4));
  EXPECT_THROW(acc.add_batch(at::randn({4, 19})), c10::ValueError);
  EXPECT_THROW(acc.add_batch(at::ones({4, 20}, at::kInt)), c10::TypeError);
  acc.reset();
  EXPECT_EQ(acc.num_samples(), 0);
}

TEST(Gptq, DeadChannelsKeepRoundToNearest) {
  at::Tensor x = make_inputs(200, 32, 61);
  x.select(1, 5).zero_();
  const at::Tensor h = 2.0 / 200 * at::matmul(x.t(), x);
  at::manual_seed(62);
  const at::Tensor w = at::randn({8, 32});
  const std::string cfg = int_cfg(4, "\"axis\": 0");
  const auto res = algorithms::gptq_quantize_weight(w, h, cfg_of(cfg));
  EXPECT_EQ(res.dead_columns, 1);
  const at::Tensor rtn = quantize_tensor(w, c10::nullopt, c10::nullopt, cfg);
  EXPECT_TRUE(at::equal(res.weight.select(1, 5), rtn.select(1, 5)));
}

template <typename E>
void expect_error_naming(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Gptq, ErrorsNameTheLayer) {
  const std::string cfg = int_cfg(4, "\"axis\": 0");
  const at::Tensor w = at::randn({4, 2});
  algorithms::GptqOptions opt;
  // Indefinite (eigenvalues -2 and 4): not fixed by any dampening up to percdamp = 1.
  const at::Tensor indefinite = at::tensor({1.0f, 3.0f, 3.0f, 1.0f}).reshape({2, 2});
  expect_error_naming<c10::Error>(
      [&] { algorithms::gptq_quantize_weight(w, indefinite, cfg_of(cfg), opt, c10::nullopt, "blk.3.fc"); },
      "'blk.3.fc': the Hessian is not positive definite");
  at::Tensor nan_h = at::eye(2);
  nan_h[0][1] = NAN;
  expect_error_naming<c10::Error>(
      [&] { algorithms::gptq_quantize_weight(w, nan_h, cfg_of(cfg), opt, c10::nullopt, "blk.0.q"); },
      "'blk.0.q': the Hessian holds NaN or Inf");
  at::Tensor nan_w = w.clone();
  nan_w[1][1] = NAN;
  expect_error_naming<c10::Error>(
      [&] { algorithms::gptq_quantize_weight(nan_w, at::eye(2), cfg_of(cfg), opt, c10::nullopt, "l"); },
      "'l': the weight holds NaN or Inf");
  expect_error_naming<c10::ValueError>(
      [&] { algorithms::gptq_quantize_weight(w, at::eye(3), cfg_of(cfg), opt, c10::nullopt, "l"); },
      "the Hessian must be [2, 2]");
  expect_error_naming<c10::NotImplementedError>(
      [&] {
        algorithms::gptq_quantize_weight(
            w, at::eye(2),
            cfg_of("{\"num_bits\": [2, 1], \"block_sizes\": {\"-1\": 32, \"type\": \"dynamic\", "
            "\"scale_bits\": [8, 0]}}"),
            opt, c10::nullopt, "mx");
      },
      "MX, NF4 and GGUF");
  expect_error_naming<c10::NotImplementedError>(
      [&] { algorithms::gptq_check_weight_config(cfg_of(int_cfg(4, "\"axis\": 1")), 4, 2, "col"); },
      "axis=0");
  opt.percdamp = 1.5;
  expect_error_naming<c10::ValueError>(
      [&] { algorithms::gptq_quantize_weight(w, at::eye(2), cfg_of(cfg), opt); }, "percdamp");
}

// ----- the blocked factor of gptq_hessian_inverse ---------------------------------------------

// Upper triangular inverse by back substitution (naive float64).
Mat upper_inverse(const Mat& u, int n) {
  Mat inv(n * n, 0.0);
  for (int c = 0; c < n; ++c) {
    for (int i = c; i >= 0; --i) {
      double s = i == c ? 1.0 : 0.0;
      for (int k = i + 1; k <= c; ++k) s -= u[i * n + k] * inv[k * n + c];
      inv[i * n + c] = s / u[i * n + i];
    }
  }
  return inv;
}

// The float64 oracle of GptqHessianInverse::factor: U (U^T U = (H + damp I)^-1) from the inverse
// and its Cholesky factor, R = U^-1; diagonal blocks U_cc, above them R[:c0, c] U_cc.
Mat ref_blocked_factor(Mat h, int n, double percdamp, int block) {
  double mean = 0.0;
  for (int j = 0; j < n; ++j) mean += h[j * n + j];
  mean /= n;
  for (int j = 0; j < n; ++j) h[j * n + j] += percdamp * mean;
  const Mat lo = cholesky_lower(spd_inverse(h, n), n);
  Mat u(n * n, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = i; j < n; ++j) u[i * n + j] = lo[j * n + i];
  }
  const Mat r = upper_inverse(u, n);
  Mat f(n * n, 0.0);
  for (int c0 = 0; c0 < n; c0 += block) {
    const int c1 = std::min(c0 + block, n);
    for (int i = 0; i < c1; ++i) {
      for (int j = c0; j < c1; ++j) {
        if (i >= c0) {
          f[i * n + j] = u[i * n + j];
        } else {
          double s = 0.0;
          for (int k = c0; k <= j; ++k) s += r[i * n + k] * u[k * n + j];
          f[i * n + j] = s;
        }
      }
    }
  }
  return f;
}

TEST(GptqHessianFactor, BlockedFactorMatchesFloat64OracleInBothPrecisions) {
  const int n = 50;
  const at::Tensor x = make_inputs(300, n, 21);
  const at::Tensor h = at::matmul(x.t(), x).mul(2.0 / 300);
  for (const auto precision : {algorithms::HessianFactorPrecision::kFloat32,
                               algorithms::HessianFactorPrecision::kFloat64}) {
    const bool fp32 = precision == algorithms::HessianFactorPrecision::kFloat32;
    for (const int block : {16, 7, 50, 128}) {
      SCOPED_TRACE(std::string(fp32 ? "fp32" : "fp64") + " block " + std::to_string(block));
      const auto got =
          algorithms::gptq_hessian_inverse(h, 0.01, false, block, "l", "GPTQ", precision);
      EXPECT_EQ(got.fp32_factorization, fp32);
      EXPECT_EQ(got.block, block);
      const Mat ref = ref_blocked_factor(to_mat(h), n, 0.01, block);
      const Mat ours = to_mat(got.factor);
      double scale = 0.0, worst = 0.0;
      for (size_t i = 0; i < ref.size(); ++i) {
        scale = std::max(scale, std::abs(ref[i]));
        worst = std::max(worst, std::abs(ours[i] - ref[i]));
      }
      // cond(H + damp I) is about 1e3 here: fp32 factors to ~1e-4 relative at worst.
      EXPECT_LE(worst, (fp32 ? 2e-4 : 2e-5) * scale);
    }
  }
}

TEST(GptqHessianFactor, ConditionBoundIsRigorousAndPicksThePrecision) {
  const int n = 64;
  at::manual_seed(5);
  const at::Tensor iid = at::randn({2000, n});
  at::Tensor outlier = at::randn({2000, n});
  outlier.select(1, 3).mul_(300.0);  // an LLM-like outlier channel
  for (const auto& [x, percdamp, want_fp32] :
       {std::tuple{iid, 0.1, true}, std::tuple{iid, 0.01, true},
        std::tuple{outlier, 0.01, false}, std::tuple{make_inputs(400, n, 9), 0.0, false}}) {
    const at::Tensor h = at::matmul(x.t(), x).mul(2.0 / x.size(0));
    const double damp = percdamp * h.diagonal().mean().item<double>();
    const at::Tensor damped = h.to(at::kDouble) + damp * at::eye(n, at::kDouble);
    const at::Tensor eig = at::linalg_eigvalsh(damped);
    const double cond = (eig[n - 1] / eig[0]).item<double>();
    const double bound = algorithms::hessian_condition_bound(damped, damp);
    EXPECT_GE(bound, cond * (1.0 - 1e-9));
    const auto got = algorithms::gptq_hessian_inverse(h, percdamp, false, 16);
    EXPECT_EQ(got.fp32_factorization, want_fp32) << "bound " << bound << ", cond " << cond;
    EXPECT_EQ(got.fp32_factorization, bound <= algorithms::kHessianFp32MaxCondition);
  }
}

TEST(Gptq, OutlierChannelHessianMatchesFloat64Reference) {
  // The fp64 factorization path (the outlier channel's condition bound is far above the fp32
  // limit), end to end against the naive reference, with act_order's permutation on top.
  const int64_t rows = 24, cols = 64;
  at::Tensor x = make_inputs(500, cols, 31);
  x.select(1, 10).mul_(200.0);
  const at::Tensor h = at::matmul(x.t(), x).mul(2.0 / 500);
  EXPECT_FALSE(algorithms::gptq_hessian_inverse(h, 0.01, false, 32).fp32_factorization);
  at::manual_seed(32);
  const at::Tensor w = at::randn({rows, cols}) * 0.1;
  algorithms::GptqOptions opt;
  opt.block_size = 16;
  const std::string cfg = int_cfg(4, "\"axis\": 0");
  const auto res = algorithms::gptq_quantize_weight(w, h, cfg_of(cfg), opt);
  const Mat ref = ref_gptq(to_mat(w), to_mat(h), rows, cols, {4, 0}, 16, 0.01);
  const at::Tensor ref_t = at::tensor(ref, at::kDouble).reshape({rows, cols});
  EXPECT_NEAR(output_error(w, res.weight, h), output_error(w, ref_t, h),
              1e-3 * output_error(w, ref_t, h));
  int64_t same = 0;
  const Mat ours = to_mat(res.weight);
  for (size_t i = 0; i < ref.size(); ++i) same += std::abs(ours[i] - ref[i]) <= 1e-5;
  EXPECT_GE(same, static_cast<int64_t>(0.99 * ref.size()));
}

TEST(Gptq, SingularHessianGetsMoreDampening) {
  // [[1, 1], [1, 1]] is positive semi-definite with a zero pivot: percdamp = 0 fails, 1e-4 works.
  const at::Tensor h = at::ones({2, 2});
  algorithms::GptqOptions opt;
  opt.percdamp = 0.0;
  const auto res =
      algorithms::gptq_quantize_weight(at::randn({3, 2}), h, cfg_of(int_cfg(8, "\"axis\": 0")), opt);
  EXPECT_DOUBLE_EQ(res.percdamp, 1e-4);
}

}  // namespace
}  // namespace mopt
