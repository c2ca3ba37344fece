#include "mopt/cache/metrics.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/tensor_utils.h"
#include "mopt/core/error.h"

namespace mopt::cache {

namespace {

void check_floating(const at::Tensor& t, const char* fn, const char* what) {
  MOPT_CHECK_VALUE(t.defined(), fn, ": ", what, " is undefined");
  MOPT_CHECK_TYPE(at::isFloatingType(t.scalar_type()), fn, ": expected a floating-point ", what,
                  ", got ", t.scalar_type());
}

void check_finite(const at::Tensor& t, const char* fn, const char* what) {
  MOPT_CHECK_VALUE(t.isfinite().all().item<bool>(), fn, ": ", what,
                   " contains NaN or Inf values");
}

// Common checks of the image metrics: same non-empty shape with a batch dim, finite values.
void check_pair(const at::Tensor& samples, const at::Tensor& reference, const char* fn) {
  check_floating(samples, fn, "samples");
  check_floating(reference, fn, "reference");
  MOPT_CHECK_VALUE(samples.dim() >= 1 && samples.numel() > 0, fn,
                   ": expected a non-empty batch [N, ...], got samples of shape ",
                   core::shape_str(samples.sizes()));
  MOPT_CHECK_VALUE(samples.sizes() == reference.sizes(), fn, ": samples of shape ",
                   core::shape_str(samples.sizes()), " and reference of shape ",
                   core::shape_str(reference.sizes()), " differ");
  MOPT_CHECK_VALUE(samples.device() == reference.device(), fn, ": samples on ", samples.device(),
                   " and reference on ", reference.device());
  check_finite(samples, fn, "samples");
  check_finite(reference, fn, "reference");
}

double value_range(const at::Tensor& reference_f64, const char* fn) {
  const at::Tensor mm = at::stack({reference_f64.max(), reference_f64.min()}).cpu();
  const double r = mm[0].item<double>() - mm[1].item<double>();
  MOPT_CHECK_VALUE(r > 0.0, fn, ": the reference batch is constant (max - min = 0); PSNR/SSIM ",
                   "need a value range");
  return r;
}

double psnr_of_mse(double r, double mse) {
  if (mse == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(r * r / mse);
}

// [K] normalized Gaussian weights centred on the window.
at::Tensor gaussian_window_1d(int64_t size, double sigma, const at::TensorOptions& opts) {
  const at::Tensor x = at::arange(size, opts) - static_cast<double>(size - 1) / 2.0;
  const at::Tensor g = at::exp(-(x * x) / (2.0 * sigma * sigma));
  return g / g.sum();
}

// [N, C, H, W] view of image batches given as [N, C, H, W] or [N, H, W].
at::Tensor as_nchw(const at::Tensor& t, const char* fn) {
  MOPT_CHECK_VALUE(t.dim() == 3 || t.dim() == 4, fn,
                   ": expected images [N, C, H, W] or [N, H, W], got shape ",
                   core::shape_str(t.sizes()));
  return t.dim() == 3 ? t.unsqueeze(1) : t;
}

void check_features(const at::Tensor& f, const char* what) {
  constexpr const char* fn = "frechet_distance";
  check_floating(f, fn, what);
  MOPT_CHECK_VALUE(f.dim() == 2 && f.size(0) >= 2 && f.size(1) >= 1, fn, ": expected ", what,
                   " [N, D] with N >= 2 samples, got shape ", core::shape_str(f.sizes()));
  check_finite(f, fn, what);
}

void check_statistics(const FeatureStatistics& s, const char* what) {
  constexpr const char* fn = "frechet_distance";
  check_floating(s.mean, fn, what);
  check_floating(s.covariance, fn, what);
  const int64_t d = s.mean.dim() == 1 ? s.mean.size(0) : -1;
  MOPT_CHECK_VALUE(d >= 1 && s.covariance.dim() == 2 && s.covariance.size(0) == d &&
                       s.covariance.size(1) == d,
                   fn, ": ", what, " needs a mean [D] and a covariance [D, D], got ",
                   core::shape_str(s.mean.sizes()), " and ", core::shape_str(s.covariance.sizes()));
  check_finite(s.mean, fn, what);
  check_finite(s.covariance, fn, what);
}

}  // namespace

at::Tensor psnr_db_per_sample(const at::Tensor& samples, const at::Tensor& reference) {
  constexpr const char* fn = "psnr_db";
  check_pair(samples, reference, fn);
  const at::Tensor ref = reference.to(at::kDouble);
  const double r = value_range(ref, fn);
  const int64_t n = samples.size(0);
  const at::Tensor mse =
      (samples.to(at::kDouble) - ref).square().reshape({n, -1}).mean(1).cpu().contiguous();
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kDouble));
  const double* m = mse.data_ptr<double>();
  double* o = out.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) o[i] = psnr_of_mse(r, m[i]);
  return out;
}

double psnr_db(const at::Tensor& samples, const at::Tensor& reference) {
  constexpr const char* fn = "psnr_db";
  check_pair(samples, reference, fn);
  const at::Tensor ref = reference.to(at::kDouble);
  const double r = value_range(ref, fn);
  const double mse = (samples.to(at::kDouble) - ref).square().mean().item<double>();
  return psnr_of_mse(r, mse);
}

at::Tensor ssim_per_sample(const at::Tensor& samples, const at::Tensor& reference,
                           const SsimOptions& options) {
  constexpr const char* fn = "ssim";
  check_pair(samples, reference, fn);
  const int64_t k = options.window_size;
  MOPT_CHECK_VALUE(k >= 1 && k % 2 == 1, fn, ": window_size must be a positive odd number, got ",
                   k);
  MOPT_CHECK_VALUE(std::isfinite(options.sigma) && options.sigma > 0.0, fn,
                   ": sigma must be positive, got ", options.sigma);
  MOPT_CHECK_VALUE(std::isfinite(options.k1) && options.k1 > 0.0 && std::isfinite(options.k2) &&
                       options.k2 > 0.0,
                   fn, ": K1 and K2 must be positive, got ", options.k1, " and ", options.k2);
  const at::Tensor x = as_nchw(samples, fn).to(at::kDouble);
  const at::Tensor y = as_nchw(reference, fn).to(at::kDouble);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  MOPT_CHECK_VALUE(h >= k && w >= k, fn, ": images of ", h, "x", w,
                   " are smaller than the SSIM window ", k, "x", k);
  double r = 0.0;
  if (options.data_range.has_value()) {
    r = *options.data_range;
    MOPT_CHECK_VALUE(std::isfinite(r) && r > 0.0, fn, ": data_range must be positive, got ", r);
  } else {
    r = value_range(y, fn);
  }
  const double c1 = (options.k1 * r) * (options.k1 * r);
  const double c2 = (options.k2 * r) * (options.k2 * r);

  // Every channel of every image filtered on its own: [N*C, 1, H, W] with one [1, 1, K, K] window.
  const at::Tensor g = gaussian_window_1d(k, options.sigma, x.options());
  const at::Tensor window = at::outer(g, g).reshape({1, 1, k, k});
  const auto filter = [&](const at::Tensor& t) { return at::conv2d(t, window); };
  const at::Tensor xs = x.reshape({n * c, 1, h, w});
  const at::Tensor ys = y.reshape({n * c, 1, h, w});
  const at::Tensor mu_x = filter(xs);
  const at::Tensor mu_y = filter(ys);
  const at::Tensor mu_xx = mu_x * mu_x, mu_yy = mu_y * mu_y, mu_xy = mu_x * mu_y;
  const at::Tensor var_x = filter(xs * xs) - mu_xx;
  const at::Tensor var_y = filter(ys * ys) - mu_yy;
  const at::Tensor cov_xy = filter(xs * ys) - mu_xy;
  const at::Tensor map = ((2.0 * mu_xy + c1) * (2.0 * cov_xy + c2)) /
                         ((mu_xx + mu_yy + c1) * (var_x + var_y + c2));
  return map.reshape({n, -1}).mean(1).cpu();
}

double ssim(const at::Tensor& samples, const at::Tensor& reference, const SsimOptions& options) {
  return ssim_per_sample(samples, reference, options).mean().item<double>();
}

FeatureStatistics feature_statistics(const at::Tensor& features) {
  check_features(features, "features");
  const at::Tensor f = features.to(at::kDouble);
  const at::Tensor mean = f.mean(0);
  const at::Tensor centered = f - mean;
  const at::Tensor cov = centered.t().matmul(centered) / static_cast<double>(f.size(0) - 1);
  return {mean, cov};
}

double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b) {
  constexpr const char* fn = "frechet_distance";
  check_statistics(a, "statistics a");
  check_statistics(b, "statistics b");
  MOPT_CHECK_VALUE(a.mean.size(0) == b.mean.size(0), fn, ": feature dimensions differ (",
                   a.mean.size(0), " vs ", b.mean.size(0), ")");
  MOPT_CHECK_VALUE(a.mean.device() == b.mean.device(), fn, ": statistics on ", a.mean.device(),
                   " and ", b.mean.device());
  const at::Tensor mu_a = a.mean.to(at::kDouble), mu_b = b.mean.to(at::kDouble);
  // Symmetrized: a covariance read from a file or summed in another order may be off by rounding.
  const at::Tensor ca = (a.covariance.to(at::kDouble) + a.covariance.to(at::kDouble).t()) / 2.0;
  const at::Tensor cb = (b.covariance.to(at::kDouble) + b.covariance.to(at::kDouble).t()) / 2.0;

  const auto [eval_a, evec_a] = at::linalg_eigh(ca);
  const at::Tensor sqrt_ca = (evec_a * eval_a.clamp_min(0.0).sqrt()).matmul(evec_a.t());
  at::Tensor m = sqrt_ca.matmul(cb).matmul(sqrt_ca);
  m = (m + m.t()) / 2.0;
  const at::Tensor eval_m = at::linalg_eigvalsh(m);
  const double trace_sqrt = eval_m.clamp_min(0.0).sqrt().sum().item<double>();
  const double mean_term = (mu_a - mu_b).square().sum().item<double>();
  const double d = mean_term + ca.trace().item<double>() + cb.trace().item<double>() -
                   2.0 * trace_sqrt;
  // Equal distributions give 0 up to rounding, which may fall just below it.
  return std::max(d, 0.0);
}

double frechet_distance(const at::Tensor& features_a, const at::Tensor& features_b) {
  check_features(features_a, "features_a");
  check_features(features_b, "features_b");
  MOPT_CHECK_VALUE(features_a.size(1) == features_b.size(1),
                   "frechet_distance: feature dimensions differ (", features_a.size(1), " vs ",
                   features_b.size(1), ")");
  return frechet_distance(feature_statistics(features_a), feature_statistics(features_b));
}

at::Tensor rescale_per_sample(const at::Tensor& x, double lo, double hi) {
  constexpr const char* fn = "rescale_per_sample";
  check_floating(x, fn, "input");
  MOPT_CHECK_VALUE(x.dim() >= 1 && x.numel() > 0, fn,
                   ": expected a non-empty batch [N, ...], got shape ", core::shape_str(x.sizes()));
  MOPT_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi) && lo < hi, fn,
                   ": expected a target range lo < hi, got [", lo, ", ", hi, "]");
  check_finite(x, fn, "input");
  const int64_t n = x.size(0);
  const at::Tensor flat = x.to(at::kDouble).reshape({n, -1});
  const at::Tensor mn = std::get<0>(flat.min(1, /*keepdim=*/true));
  const at::Tensor mx = std::get<0>(flat.max(1, /*keepdim=*/true));
  const at::Tensor span = mx - mn;
  const at::Tensor constant = span == 0.0;
  const at::Tensor unit = at::where(constant, at::full_like(flat, 0.5),
                                    (flat - mn) / at::where(constant, at::ones_like(span), span));
  return (lo + (hi - lo) * unit).reshape(x.sizes()).to(x.scalar_type());
}

}  // namespace mopt::cache
