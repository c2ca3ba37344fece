// Test-only extension (not shipped): quantizes a Linear/ReLU MLP with the C++ module API, so
// Python tests can compare the C++ front end with the Python one on the same module and data.
#include <torch/extension.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <sstream>

#include "mopt/core/error.h"
#include "mopt/torch/quantize.h"

namespace py = pybind11;

namespace {

py::object optional_tensor(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? py::cast(*t) : py::none();
}

// Linear layers with the given weights and ReLU between them, quantized by mopt::quantize with
// `config_json` while `calib` batches run through. Returns the output for `x`, the summary, the
// weights afterwards and every quantizer's (amax, pre_quant_scale).
py::dict quantize_mlp(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                      const std::string& config_json, const std::vector<at::Tensor>& calib,
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
  const mopt::QuantizeConfig config = mopt::QuantizeConfig::from_json(config_json);
  mopt::ForwardLoop loop = nullptr;
  if (!calib.empty()) {
    loop = [&](torch::nn::Module&) {
      for (const auto& batch : calib) model->forward(batch);
    };
  }
  mopt::quantize(model, config, loop);
  at::NoGradGuard no_grad;
  py::dict out;
  out["out"] = model->forward(x);
  std::ostringstream summary;
  mopt::print_quant_summary(*model, summary);
  out["summary"] = summary.str();
  py::list ws;
  for (const auto& p : model->named_parameters()) {
    if (p.key().size() >= 6 && p.key().substr(p.key().size() - 6) == "weight") {
      ws.append(p.value().detach().clone());
    }
  }
  out["weights"] = ws;
  py::dict quantizers;
  for (auto& [name, q] : mopt::named_quantizers(*model)) {
    quantizers[py::str(name)] = py::make_tuple(optional_tensor(q->amax()),
                                               optional_tensor(q->pre_quant_scale()));
  }
  out["quantizers"] = quantizers;
  return out;
}

}  // namespace

PYBIND11_MODULE(mopt_test_bridge, m) {
  m.doc() = "Test-only bridge to the mopt C++ module API (not part of the mopt package)";
  m.def("quantize_mlp", torch::wrap_pybind_function(quantize_mlp), py::arg("weights"),
        py::arg("biases"), py::arg("config_json"), py::arg("calib"), py::arg("x"),
        "Quantizes a Linear/ReLU MLP with mopt::quantize; returns a dict (out, summary, weights, "
        "quantizers: name -> (amax, pre_quant_scale)).");
}
