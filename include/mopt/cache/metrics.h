// Fidelity metrics that cached diffusion sampling is measured with (SPEC §4, issue 12): PSNR and
// SSIM of cached samples against uncached samples of the same seeds, and the Frechet distance
// between feature sets (FID's formula, on any features). Everything is computed in float64 on
// the inputs' device; inputs may be any floating dtype.
// * PSNR = 10 log10(R^2 / MSE), R = max - min of the reference batch (a diffusion model's raw
//   samples leave their nominal range, so a fixed peak would mislead), MSE over all pixels.
// * SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
//   structural similarity", IEEE TIP 2004: 11x11 Gaussian window (sigma 1.5) applied without
//   padding ('valid', as the authors' ssim_index.m), K1 = 0.01, K2 = 0.03, data range R as above.
// * Frechet distance (Dowson & Landau 1982; Heusel et al. 2017 for FID):
//   |mu_a - mu_b|^2 + Tr(Ca + Cb - 2 (Ca Cb)^(1/2)), the trace of the square root taken as the sum
//   of the square roots of the eigenvalues of the symmetric PSD matrix Ca^(1/2) Cb Ca^(1/2)
//   (both from symmetric eigendecompositions, tiny negative eigenvalues of rounding clamped to 0).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace mopt::cache {

/// PSNR in dB of the batch `samples` against `reference` (same shape, first dim the batch).
/// +inf when they are equal; ValueError for mismatched shapes, non-finite values or a constant
/// reference.
double psnr_db(const at::Tensor& samples, const at::Tensor& reference);

/// PSNR in dB of each sample (float64 [N]): its own MSE, R from the whole reference batch.
at::Tensor psnr_db_per_sample(const at::Tensor& samples, const at::Tensor& reference);

/// Parameters of SSIM; the defaults are Wang et al.'s.
struct SsimOptions {
  int64_t window_size = 11;
  double sigma = 1.5;
  double k1 = 0.01;
  double k2 = 0.03;
  /// R in C1 = (K1 R)^2, C2 = (K2 R)^2; default max - min of the reference batch.
  std::optional<double> data_range;
};

/// Mean SSIM of each sample (float64 [N]) over its channels and window positions. Images are
/// [N, C, H, W] or [N, H, W] with H and W at least the window size.
at::Tensor ssim_per_sample(const at::Tensor& samples, const at::Tensor& reference,
                           const SsimOptions& options = {});

/// SSIM averaged over the batch (the mean of ssim_per_sample).
double ssim(const at::Tensor& samples, const at::Tensor& reference,
            const SsimOptions& options = {});

/// Mean and covariance (unbiased, as numpy.cov) of a feature set, in float64.
struct FeatureStatistics {
  at::Tensor mean;        // [D]
  at::Tensor covariance;  // [D, D]
};

/// Statistics of `features` [N, D] (N >= 2, finite).
FeatureStatistics feature_statistics(const at::Tensor& features);

/// Frechet distance between two Gaussians given by their statistics.
double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b);

/// Frechet distance between the Gaussians fitted to `features_a` [Na, D] and `features_b`
/// [Nb, D].
double frechet_distance(const at::Tensor& features_a, const at::Tensor& features_b);

/// Each sample (first dim) mapped affinely from its own [min, max] onto [lo, hi], in the
/// input's dtype; a constant sample maps to (lo + hi) / 2.
at::Tensor rescale_per_sample(const at::Tensor& x, double lo, double hi);

}  // namespace mopt::cache
