// The fidelity metrics of include/mopt/cache/metrics.h against naive references written here:
// PSNR from scalar loops, SSIM as the per-pixel double loop of Wang et al.'s definition, the
// Frechet distance with the matrix square root from Denman-Beavers iteration (no
// eigendecomposition), and the error paths.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "mopt/cache/metrics.h"

namespace mopt::cache {
namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype = at::kFloat) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kDouble)).to(dtype);
}

// Scalar-loop PSNR: R from the reference batch, MSE over the pixels of `first..first+count`.
double ref_psnr(const at::Tensor& s, const at::Tensor& r, int64_t first, int64_t count) {
  const at::Tensor sf = s.to(at::kDouble).contiguous().reshape({s.size(0), -1});
  const at::Tensor rf = r.to(at::kDouble).contiguous().reshape({r.size(0), -1});
  const double* ps = sf.data_ptr<double>();
  const double* pr = rf.data_ptr<double>();
  double lo = pr[0], hi = pr[0];
  for (int64_t i = 0; i < rf.numel(); ++i) {
    lo = std::min(lo, pr[i]);
    hi = std::max(hi, pr[i]);
  }
  const int64_t per = sf.size(1);
  double sum = 0.0;
  for (int64_t i = first * per; i < (first + count) * per; ++i) {
    sum += (ps[i] - pr[i]) * (ps[i] - pr[i]);
  }
  const double mse = sum / static_cast<double>(count * per);
  return 10.0 * std::log10((hi - lo) * (hi - lo) / mse);
}

// SSIM of one [H, W] image pair with explicit window sums at every valid position.
double ref_ssim_image(const double* x, const double* y, int64_t h, int64_t w, double r) {
  const int64_t k = 11, half = 5;
  const double sigma = 1.5;
  std::vector<double> g(k * k);
  double total = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      const double di = static_cast<double>(i - half), dj = static_cast<double>(j - half);
      g[i * k + j] = std::exp(-(di * di + dj * dj) / (2.0 * sigma * sigma));
      total += g[i * k + j];
    }
  }
  for (double& v : g) v /= total;
  const double c1 = (0.01 * r) * (0.01 * r), c2 = (0.03 * r) * (0.03 * r);
  double sum = 0.0;
  int64_t positions = 0;
  for (int64_t oi = 0; oi + k <= h; ++oi) {
    for (int64_t oj = 0; oj + k <= w; ++oj) {
      double mx = 0, my = 0;
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < k; ++j) {
          mx += g[i * k + j] * x[(oi + i) * w + oj + j];
          my += g[i * k + j] * y[(oi + i) * w + oj + j];
        }
      }
      double vx = 0, vy = 0, cxy = 0;
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < k; ++j) {
          const double dx = x[(oi + i) * w + oj + j] - mx, dy = y[(oi + i) * w + oj + j] - my;
          vx += g[i * k + j] * dx * dx;
          vy += g[i * k + j] * dy * dy;
          cxy += g[i * k + j] * dx * dy;
        }
      }
      sum += ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
      ++positions;
    }
  }
  return sum / static_cast<double>(positions);
}

// Principal square root of an SPD matrix by Denman-Beavers iteration.
at::Tensor ref_sqrtm(const at::Tensor& a) {
  at::Tensor y = a.clone(), z = at::eye(a.size(0), a.options());
  for (int it = 0; it < 100; ++it) {
    const at::Tensor yi = at::linalg_inv(y), zi = at::linalg_inv(z);
    y = 0.5 * (y + zi);
    z = 0.5 * (z + yi);
  }
  return y;
}

// Sample mean and covariance by explicit sums.
std::pair<at::Tensor, at::Tensor> ref_stats(const at::Tensor& f) {
  const int64_t n = f.size(0), d = f.size(1);
  at::Tensor mu = at::zeros({d}, at::kDouble), cov = at::zeros({d, d}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) mu += f[i];
  mu /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) cov += at::outer(f[i] - mu, f[i] - mu);
  cov /= static_cast<double>(n - 1);
  return {mu, cov};
}

TEST(CacheMetrics, PsnrMatchesScalarLoops) {
  const at::Tensor ref = randn({4, 1, 28, 28}, 1) * 2.0 + 0.5;
  const at::Tensor samples = ref + 0.05 * randn({4, 1, 28, 28}, 2);
  EXPECT_NEAR(psnr_db(samples, ref), ref_psnr(samples, ref, 0, 4), 1e-9);
  const at::Tensor per = psnr_db_per_sample(samples, ref);
  ASSERT_EQ(per.size(0), 4);
  EXPECT_EQ(per.scalar_type(), at::kDouble);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(per[i].item<double>(), ref_psnr(samples, ref, i, 1), 1e-9);
  }
  // Larger errors give lower PSNR; equal inputs give +inf.
  EXPECT_LT(psnr_db(ref + 0.2 * randn({4, 1, 28, 28}, 3), ref), psnr_db(samples, ref));
  EXPECT_EQ(psnr_db(ref, ref), std::numeric_limits<double>::infinity());
}

TEST(CacheMetrics, PsnrUsesTheReferenceRangeNotAFixedPeak) {
  const at::Tensor ref = randn({2, 1, 28, 28}, 4, at::kDouble);
  const at::Tensor samples = ref + 0.1 * randn({2, 1, 28, 28}, 5, at::kDouble);
  // Scaling both by 3 leaves R^2 / MSE unchanged (float64: float32 products would round).
  EXPECT_NEAR(psnr_db(samples * 3.0, ref * 3.0), psnr_db(samples, ref), 1e-9);
}

TEST(CacheMetrics, SsimMatchesWindowLoops) {
  const at::Tensor ref = randn({3, 2, 20, 17}, 6, at::kDouble);
  const at::Tensor samples = ref + 0.3 * randn({3, 2, 20, 17}, 7, at::kDouble);
  const at::Tensor got = ssim_per_sample(samples, ref);
  const at::Tensor r = ref.max() - ref.min();
  const at::Tensor sc = samples.contiguous(), rc = ref.contiguous();
  for (int64_t i = 0; i < 3; ++i) {
    double expected = 0.0;
    for (int64_t c = 0; c < 2; ++c) {
      expected += ref_ssim_image(sc[i][c].contiguous().data_ptr<double>(),
                                 rc[i][c].contiguous().data_ptr<double>(), 20, 17,
                                 r.item<double>());
    }
    EXPECT_NEAR(got[i].item<double>(), expected / 2.0, 1e-10) << "sample " << i;
  }
  EXPECT_NEAR(ssim(samples, ref), got.mean().item<double>(), 1e-12);
  EXPECT_NEAR(ssim(ref, ref), 1.0, 1e-12);
  // [N, H, W] is the single-channel case.
  const at::Tensor one = ssim_per_sample(samples.select(1, 0), ref.select(1, 0));
  EXPECT_NEAR(one[0].item<double>(),
              ref_ssim_image(sc[0][0].contiguous().data_ptr<double>(),
                             rc[0][0].contiguous().data_ptr<double>(), 20, 17,
                             (ref.select(1, 0).max() - ref.select(1, 0).min()).item<double>()),
              1e-10);
}

TEST(CacheMetrics, FrechetDistanceMatchesDenmanBeaversSqrt) {
  const at::Tensor a = randn({200, 6}, 8, at::kDouble);
  const at::Tensor mix = randn({6, 6}, 9, at::kDouble);
  const at::Tensor b = randn({150, 6}, 10, at::kDouble).matmul(mix) + 0.7;
  const auto [mu_a, ca] = ref_stats(a);
  const auto [mu_b, cb] = ref_stats(b);
  // Tr sqrt(Ca Cb) = Tr sqrt(sqrt(Ca) Cb sqrt(Ca)), each root computed by iteration.
  const at::Tensor sa = ref_sqrtm(ca);
  const double tr = ref_sqrtm(sa.matmul(cb).matmul(sa)).trace().item<double>();
  const double expected = (mu_a - mu_b).square().sum().item<double>() +
                          ca.trace().item<double>() + cb.trace().item<double>() - 2.0 * tr;
  EXPECT_NEAR(frechet_distance(a, b), expected, 1e-9 * expected);
  EXPECT_NEAR(frechet_distance(a.to(at::kFloat), b.to(at::kFloat)), expected, 1e-5 * expected);
  const FeatureStatistics s = feature_statistics(a);
  EXPECT_TRUE(at::allclose(s.mean, mu_a, 0, 1e-12));
  EXPECT_TRUE(at::allclose(s.covariance, ca, 0, 1e-12));
  EXPECT_NEAR(frechet_distance(s, feature_statistics(b)), expected, 1e-9 * expected);
  // Symmetric, zero against itself.
  EXPECT_NEAR(frechet_distance(b, a), expected, 1e-9 * expected);
  EXPECT_NEAR(frechet_distance(a, a), 0.0, 1e-9);
}

TEST(CacheMetrics, FrechetDistanceOfRankDeficientCovariances) {
  // Fewer samples than features: singular covariances, whose eigenvalues may round below zero.
  const at::Tensor a = randn({5, 16}, 11, at::kDouble);
  const at::Tensor b = randn({7, 16}, 12, at::kDouble) + 0.1;
  const double d = frechet_distance(a, b);
  EXPECT_TRUE(std::isfinite(d));
  EXPECT_GT(d, 0.0);
  EXPECT_NEAR(frechet_distance(a, a), 0.0, 1e-9);
}

TEST(CacheMetrics, RescalePerSample) {
  at::Tensor x = randn({3, 1, 4, 4}, 13) * 5.0;
  x[2].fill_(7.0);
  const at::Tensor y = rescale_per_sample(x, 0.0, 1.0);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  EXPECT_EQ(y.sizes(), x.sizes());
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(y[i].min().item<double>(), 0.0, 1e-6);
    EXPECT_NEAR(y[i].max().item<double>(), 1.0, 1e-6);
    const double lo = x[i].min().item<double>(), hi = x[i].max().item<double>();
    EXPECT_TRUE(at::allclose(y[i], (x[i] - lo) / (hi - lo), 1e-5, 1e-6));
  }
  EXPECT_TRUE(at::allclose(y[2], at::full_like(y[2], 0.5)));
}

TEST(CacheMetrics, BadInputIsAValueError) {
  const at::Tensor a = randn({2, 1, 28, 28}, 14);
  EXPECT_THROW(psnr_db(a, a.narrow(0, 0, 1)), c10::ValueError);
  EXPECT_THROW(psnr_db(a, at::zeros_like(a)), c10::ValueError);  // constant reference
  at::Tensor nan = a.clone();
  nan[0][0][0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(psnr_db(nan, a), c10::ValueError);
  EXPECT_THROW(ssim(a, nan), c10::ValueError);
  EXPECT_THROW(ssim(a.narrow(3, 0, 8), a.narrow(3, 0, 8)), c10::ValueError);  // below the window
  EXPECT_THROW(ssim(a.reshape({2, 784}), a.reshape({2, 784})), c10::ValueError);
  EXPECT_THROW(psnr_db(a.to(at::kInt), a.to(at::kInt)), c10::TypeError);
  EXPECT_THROW(frechet_distance(randn({1, 4}, 15), randn({3, 4}, 16)), c10::ValueError);
  EXPECT_THROW(frechet_distance(randn({3, 4}, 15), randn({3, 5}, 16)), c10::ValueError);
  EXPECT_THROW(rescale_per_sample(a, 1.0, 0.0), c10::ValueError);
  SsimOptions even;
  even.window_size = 10;
  EXPECT_THROW(ssim(a, a, even), c10::ValueError);
}

}  // namespace
}  // namespace mopt::cache
