// include/mopt/cache/metrics.h: the fidelity metrics of cached diffusion sampling (PSNR, SSIM,
// Frechet distance of feature sets) that mopt.cache_diffusion.metrics wraps.
#include "bindings.h"
#include <pybind11/stl.h>

#include "mopt/cache/metrics.h"

namespace py = pybind11;

namespace mopt::python {

void bind_cache_metrics(py::module_& m) {
  m.def("psnr_db", no_gil_with_warnings(&cache::psnr_db), py::arg("samples"),
        py::arg("reference"),
        "10 log10(R^2 / MSE) in dB over the whole batch, R = max - min of the reference batch.");
  m.def("psnr_db_per_sample", no_gil_with_warnings(&cache::psnr_db_per_sample),
        py::arg("samples"), py::arg("reference"),
        "PSNR of each sample (float64 [N]), R from the whole reference batch.");
  m.def(
      "ssim_per_sample",
      no_gil_with_warnings([](const at::Tensor& samples, const at::Tensor& reference,
                              std::optional<double> data_range, int64_t window_size,
                              double sigma, double k1, double k2) {
        cache::SsimOptions o;
        o.window_size = window_size;
        o.sigma = sigma;
        o.k1 = k1;
        o.k2 = k2;
        o.data_range = data_range;
        return cache::ssim_per_sample(samples, reference, o);
      }),
      py::arg("samples"), py::arg("reference"), py::arg("data_range") = py::none(),
      py::arg("window_size") = 11, py::arg("sigma") = 1.5, py::arg("k1") = 0.01,
      py::arg("k2") = 0.03,
      "SSIM (Wang et al. 2004, 'valid' Gaussian window) of each sample, float64 [N]; "
      "data_range defaults to max - min of the reference batch.");
  m.def(
      "feature_statistics",
      no_gil_with_warnings([](const at::Tensor& features) {
        cache::FeatureStatistics s = cache::feature_statistics(features);
        return std::make_tuple(s.mean, s.covariance);
      }),
      py::arg("features"), "(mean [D], unbiased covariance [D, D]) of features [N, D], float64.");
  m.def(
      "frechet_distance",
      no_gil_with_warnings([](const at::Tensor& a, const at::Tensor& b) {
        return cache::frechet_distance(a, b);
      }),
      py::arg("features_a"), py::arg("features_b"),
      "Frechet distance between Gaussians fitted to two feature sets [Na, D] and [Nb, D].");
  m.def(
      "frechet_distance_from_statistics",
      no_gil_with_warnings([](const at::Tensor& mean_a, const at::Tensor& cov_a,
                              const at::Tensor& mean_b, const at::Tensor& cov_b) {
        return cache::frechet_distance(cache::FeatureStatistics{mean_a, cov_a},
                                       cache::FeatureStatistics{mean_b, cov_b});
      }),
      py::arg("mean_a"), py::arg("cov_a"), py::arg("mean_b"), py::arg("cov_b"),
      "Frechet distance between two Gaussians given by mean and covariance.");
  m.def("rescale_per_sample", no_gil_with_warnings(&cache::rescale_per_sample), py::arg("x"),
        py::arg("lo"), py::arg("hi"),
        "Each sample mapped from its own [min, max] onto [lo, hi] (constant ones to the middle).");
}

}  // namespace mopt::python
