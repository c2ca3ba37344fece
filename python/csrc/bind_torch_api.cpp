// Bindings of the C++ module API's config side (predefined configs, QuantizeConfig JSON, fnmatch)
// and a cross-language check that quantizes an MLP with the C++ API, so tests can compare the
// C++ and Python quantizers bit for bit.
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <sstream>
#include <tuple>

#include "bindings.h"
#include "mopt/core/error.h"
#include "mopt/core/fnmatch.h"
#include "mopt/torch/configs.h"
#include "mopt/torch/quantize.h"

namespace py = pybind11;

namespace mopt::python {
namespace {

// Linear layers with the given weights, ReLU between them, quantized by mopt::quantize with
// `config_json` while `calib` batches run through; returns the output for `x` and the summary.
std::tuple<at::Tensor, std::string> cxx_quantize_mlp(const std::vector<at::Tensor>& weights,
                                                     const std::vector<at::Tensor>& biases,
                                                     const std::string& config_json,
                                                     const std::vector<at::Tensor>& calib,
                                                     const at::Tensor& x) {
  MOPT_CHECK_VALUE(!weights.empty() && weights.size() == biases.size(),
                   "need one bias per weight, got ", weights.size(), " weights and ",
                   biases.size(), " biases");
  torch::nn::Sequential model;
  for (size_t i = 0; i < weights.size(); ++i) {
    torch::nn::Linear layer(weights[i].size(1), weights[i].size(0));
    at::NoGradGuard no_grad;
    layer->weight.copy_(weights[i]);
    layer->bias.copy_(biases[i]);
    model->push_back(layer);
    if (i + 1 < weights.size()) model->push_back(torch::nn::ReLU());
  }
  const QuantizeConfig config = QuantizeConfig::from_json(config_json);
  ForwardLoop loop = nullptr;
  if (!calib.empty()) {
    loop = [&](torch::nn::Module&) {
      for (const auto& batch : calib) model->forward(batch);
    };
  }
  quantize(model, config, loop);
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(x);
  std::ostringstream summary;
  print_quant_summary(*model, summary);
  return {out, summary.str()};
}

}  // namespace

void bind_torch_api(py::module_& m) {
  m.def(
      "predefined_config_json",
      [](const std::string& name) { return predefined_config(name).to_json(); }, py::arg("name"),
      "JSON of the C++ predefined config `name` (e.g. INT8_DEFAULT_CFG).");
  m.def(
      "recipes",
      [] {
        py::list rows;
        for (const Recipe& r : recipes()) {
          py::dict d;
          d["name"] = r.name;
          d["config"] = r.config_name;
          d["description"] = r.description;
          d["algorithm"] = r.algorithm ? py::object(py::str(*r.algorithm)) : py::none();
          d["needs_kv_quantizers"] = r.needs_kv_quantizers;
          rows.append(d);
        }
        return rows;
      },
      "The named recipes of `mopt ptq` (dicts: name, config, description, algorithm as JSON or "
      "None to keep the config's, needs_kv_quantizers).");
  m.def("predefined_config_names", &predefined_config_names,
        "Names of the predefined configs the C++ API defines.");
  m.def(
      "normalize_quantize_config",
      [](const std::string& json) { return QuantizeConfig::from_json(json).to_json(); },
      py::arg("json"), "Parses and validates a quantize config with the C++ QuantizeConfig.");
  m.def("fnmatch", &fnmatch, py::arg("name"), py::arg("pattern"),
        "The C++ wildcard matcher mopt::quantize uses (Python's fnmatch.fnmatchcase semantics).");
  m.def("_cxx_quantize_mlp", &cxx_quantize_mlp, py::arg("weights"), py::arg("biases"),
        py::arg("config_json"), py::arg("calib"), py::arg("x"),
        "Quantizes a Linear/ReLU MLP with the C++ module API; returns (output, summary).");
}

}  // namespace mopt::python
