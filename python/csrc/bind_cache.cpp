// include/mopt/cache: the cache policy that mopt.cache_diffusion's cached modules consult at every
// call of a cached block.
#include "bindings.h"
#include <pybind11/stl.h>

#include "mopt/cache/policy.h"

namespace py = pybind11;

namespace mopt::python {

void bind_cache(py::module_& m) {
  py::class_<cache::CachePolicy>(m, "CachePolicy",
                                 "Decides per call whether a cached block runs or returns cached "
                                 "(or forecast) features; see include/mopt/cache/policy.h.")
      .def(py::init([](const std::string& config_json) {
             return cache::CachePolicy(cache::policy_config_from_json(config_json));
           }),
           py::arg("config_json") = "{}")
      .def_property_readonly("config_json",
                             [](const cache::CachePolicy& p) { return p.config().to_json(); })
      .def(
          "decide",
          // the GIL stays held: the work is small and the tensors are Python's
          with_warnings([](cache::CachePolicy& p, const std::optional<at::Tensor>& probe,
                           std::optional<bool> reuse_requested) {
            return p.decide(probe ? c10::optional<at::Tensor>(*probe) : c10::nullopt,
                            reuse_requested ? c10::optional<bool>(*reuse_requested)
                                            : c10::nullopt);
          }),
          py::arg("probe") = py::none(), py::arg("reuse_requested") = py::none(),
          "True when this call must run the block (then store() its outputs).")
      .def("store", with_warnings([](cache::CachePolicy& p, const std::vector<at::Tensor>& out) {
             p.store(out);
           }),
           py::arg("outputs"))
      .def("reuse", &cache::CachePolicy::reuse,
           "The outputs of a call decide() chose to serve from the cache.")
      .def("reset", &cache::CachePolicy::reset, "Starts a new pipeline run.")
      .def_property_readonly("step", &cache::CachePolicy::step)
      .def_property_readonly("recomputes", &cache::CachePolicy::recomputes)
      .def_property_readonly("reuses", &cache::CachePolicy::reuses)
      .def_property_readonly(
          "history",
          [](const cache::CachePolicy& p) {
            py::list out;
            for (const auto& r : p.history()) {
              out.append(py::make_tuple(r.step, r.recomputed, r.change, r.accumulated));
            }
            return out;
          },
          "[(step, recomputed, probe change, accumulated change)] of this run.");
  py::class_<cache::ChangeProfile>(m, "CacheChangeProfile",
                                   "How fast a block's features change over an uncached run "
                                   "(relative norms of their 1st-3rd differences per call).")
      .def(py::init<>())
      .def("add", &cache::ChangeProfile::add, py::arg("features"))
      .def("merge", &cache::ChangeProfile::merge, py::arg("other"))
      .def("differences", &cache::ChangeProfile::differences, py::arg("order"))
      .def("__len__", &cache::ChangeProfile::size);
  m.def("cache_schedule_from_profile", &cache::schedule_from_profile, py::arg("profile"),
        py::arg("recomputes"), py::arg("order"), py::arg("warmup") = 1,
        "Recompute calls placed at equal quantiles of the profile's error density for Taylor "
        "order `order`.");
  m.def("cache_policy_config", [](const std::string& json) {
    return cache::policy_config_from_json(json).to_json();
  }, py::arg("config_json"), "The normalized JSON of a cache policy config (ValueError if bad).");
  m.def("relative_l1_change", &cache::relative_l1_change, py::arg("a"), py::arg("b"),
        "mean|a - b| / mean|b| in float64.");
  m.def("epsilon_to_sample", &cache::epsilon_to_sample, py::arg("eps"), py::arg("x"),
        py::arg("alpha_bar"),
        "x0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar): the denoised-sample estimate.");
  m.def("sample_to_epsilon", &cache::sample_to_epsilon, py::arg("x0"), py::arg("x"),
        py::arg("alpha_bar"), "eps = (x - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar).");
  m.def("taylor_forecast", &cache::taylor_forecast, py::arg("values"), py::arg("steps"),
        py::arg("step"),
        "Newton-form forecast at call `step` from 1 to 3 computed features at calls `steps`.");
}

}  // namespace mopt::python
