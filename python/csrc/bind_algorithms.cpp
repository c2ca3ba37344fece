// Calibration algorithms (SmoothQuant, AWQ lite, AWQ clip): the per-layer solvers that the
// Python orchestration in mopt.quantization.algorithms feeds from forward hooks.
#include "bindings.h"
#include "mopt/algorithms/awq.h"
#include "mopt/algorithms/smoothquant.h"

namespace py = pybind11;

namespace mopt::python {

void bind_algorithms(py::module_& m) {
  using algorithms::AwqClipLayer;
  using algorithms::AwqClipOptions;
  using algorithms::AwqClipResult;
  using algorithms::AwqLiteLayer;
  using algorithms::AwqLiteResult;
  using algorithms::SmoothedLinear;
  using algorithms::SmoothQuantLayer;
  using release_gil = py::call_guard<py::gil_scoped_release>;

  m.def("smoothquant_scale", &algorithms::smoothquant_scale, py::arg("act_amax"),
        py::arg("weight_max"), py::arg("alpha") = 1.0,
        "SmoothQuant per-channel scales clamp(w^(1-a) / act^a, 1e-4, 1e4) (1 for dead channels).");
  m.def("fold_pre_quant_scale", &algorithms::fold_pre_quant_scale, py::arg("weight"),
        py::arg("pre_quant_scale"), py::arg("act_amax"),
        py::arg("prior_pre_quant_scale") = py::none(),
        "Folds a per-input-channel pre_quant_scale into a linear weight.");
  m.def("awq_alpha_grid", &algorithms::awq_alpha_grid, py::arg("alpha_step") = 0.1,
        "Alphas searched by awq_lite.");
  m.def("awq_clip_ratios", &algorithms::awq_clip_ratios, py::arg("min_clip_ratio") = 0.5,
        py::arg("shrink_step") = 0.05, "Clip ratios searched by awq_clip.");
  m.def("awq_block_size", &algorithms::awq_block_size, py::arg("weight_cfg_json"),
        py::arg("in_features"), "Input-axis block length of a weight quantizer config.");
  m.def("awq_weight_scale", &algorithms::awq_weight_scale, py::arg("weight"), py::arg("block_size"),
        "AWQ weight salience: mean over rows of |W| / block max |W|.");
  m.def("awq_scale", &algorithms::awq_scale, py::arg("act_scale"), py::arg("weight_scale"),
        py::arg("alpha"), "AWQ scales for one alpha.");

  py::class_<SmoothedLinear>(m, "SmoothedLinear")
      .def_readonly("pre_quant_scale", &SmoothedLinear::pre_quant_scale)
      .def_readonly("weight", &SmoothedLinear::weight)
      .def_readonly("input_amax", &SmoothedLinear::input_amax);

  py::class_<SmoothQuantLayer>(m, "SmoothQuantLayer")
      .def(py::init<at::Tensor, double, std::string>(), py::arg("weight"), py::arg("alpha") = 1.0,
           py::arg("name") = "")
      .def("collect", &SmoothQuantLayer::collect, py::arg("x"), release_gil())
      .def("scale", &SmoothQuantLayer::scale, release_gil())
      .def("weight_max", &SmoothQuantLayer::weight_max, release_gil())
      .def("compute", &SmoothQuantLayer::compute, py::arg("prior_pre_quant_scale") = py::none(),
           release_gil())
      .def_property_readonly("act_amax", &SmoothQuantLayer::act_amax)
      .def_property_readonly("num_batches", &SmoothQuantLayer::num_batches)
      .def_property_readonly("alpha", &SmoothQuantLayer::alpha)
      .def_property_readonly("name", &SmoothQuantLayer::name);

  py::class_<AwqLiteResult>(m, "AwqLiteResult")
      .def_readonly("alpha", &AwqLiteResult::alpha)
      .def_readonly("scale", &AwqLiteResult::scale)
      .def_readonly("folded", &AwqLiteResult::folded);

  py::class_<AwqLiteLayer>(m, "AwqLiteLayer")
      .def(py::init<at::Tensor, std::string, double, std::string>(), py::arg("weight"),
           py::arg("weight_cfg_json"), py::arg("alpha_step") = 0.1, py::arg("name") = "")
      .def("collect", &AwqLiteLayer::collect, py::arg("x"), release_gil())
      .def("finish_collect", &AwqLiteLayer::finish_collect, release_gil())
      .def("search", &AwqLiteLayer::search, py::arg("x"), release_gil())
      .def("compute", &AwqLiteLayer::compute, py::arg("prior_pre_quant_scale") = py::none(),
           release_gil())
      .def_property_readonly("alphas", &AwqLiteLayer::alphas)
      .def_property_readonly("losses", &AwqLiteLayer::losses)
      .def_property_readonly("act_scale", &AwqLiteLayer::act_scale)
      .def_property_readonly("act_amax", &AwqLiteLayer::act_amax)
      .def_property_readonly("weight_scale", &AwqLiteLayer::weight_scale)
      .def_property_readonly("block_size", &AwqLiteLayer::block_size)
      .def_property_readonly("num_collect_steps", &AwqLiteLayer::num_collect_steps)
      .def_property_readonly("num_search_steps", &AwqLiteLayer::num_search_steps)
      .def_property_readonly("num_tokens", &AwqLiteLayer::num_tokens)
      .def_property_readonly("name", &AwqLiteLayer::name);

  py::class_<AwqClipResult>(m, "AwqClipResult")
      .def_readonly("amax", &AwqClipResult::amax)
      .def_readonly("ratio", &AwqClipResult::ratio)
      .def_readonly("losses", &AwqClipResult::losses);

  py::class_<AwqClipLayer>(m, "AwqClipLayer")
      .def(py::init([](at::Tensor weight, at::Tensor weight_amax, std::string cfg_json,
                       int64_t max_co_batch_size, int64_t max_tokens_per_batch,
                       double min_clip_ratio, double shrink_step, std::string name) {
             AwqClipOptions options;
             options.max_co_batch_size = max_co_batch_size;
             options.max_tokens_per_batch = max_tokens_per_batch;
             options.min_clip_ratio = min_clip_ratio;
             options.shrink_step = shrink_step;
             return AwqClipLayer(std::move(weight), std::move(weight_amax), std::move(cfg_json),
                                 options, std::move(name));
           }),
           py::arg("weight"), py::arg("weight_amax"), py::arg("weight_cfg_json"),
           py::arg("max_co_batch_size") = 1024, py::arg("max_tokens_per_batch") = 64,
           py::arg("min_clip_ratio") = 0.5, py::arg("shrink_step") = 0.05, py::arg("name") = "")
      .def("collect", &AwqClipLayer::collect, py::arg("x"), release_gil())
      .def("compute", &AwqClipLayer::compute, release_gil())
      .def_property_readonly("ratios", &AwqClipLayer::ratios)
      .def_property_readonly("per_tensor", &AwqClipLayer::per_tensor)
      .def_property_readonly("block_size", &AwqClipLayer::block_size)
      .def_property_readonly("num_batches", &AwqClipLayer::num_batches)
      .def_property_readonly("num_tokens", &AwqClipLayer::num_tokens)
      .def_property_readonly("name", &AwqClipLayer::name);
}

}  // namespace mopt::python
