// Test-only extension (not shipped): quantizes, trains (learned scales), saves and restores a
// Linear/ReLU MLP with the C++ module API, so Python tests can compare the C++ front end with the
// Python one on the same module and data.
#include <torch/extension.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

#include <sstream>

#include "mopt/core/error.h"
#include "mopt/torch/quantize.h"
#include "mopt/torch/save_restore.h"

namespace py = pybind11;

namespace {

py::object optional_tensor(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? py::cast(*t) : py::none();
}

// Linear layers of the given (out, in) sizes with ReLU between them.
torch::nn::Sequential mlp(const std::vector<std::pair<int64_t, int64_t>>& sizes) {
  torch::nn::Sequential model;
  for (size_t i = 0; i < sizes.size(); ++i) {
    model->push_back(torch::nn::Linear(sizes[i].second, sizes[i].first));
    if (i + 1 < sizes.size()) model->push_back(torch::nn::ReLU());
  }
  return model;
}

// mlp() with the given weights and biases.
torch::nn::Sequential mlp_with(const std::vector<at::Tensor>& weights,
                               const std::vector<at::Tensor>& biases) {
  MOPT_CHECK_VALUE(!weights.empty() && weights.size() == biases.size(),
                   "need one bias per weight, got ", weights.size(), " weights and ",
                   biases.size(), " biases");
  std::vector<std::pair<int64_t, int64_t>> sizes;
  for (const auto& w : weights) sizes.emplace_back(w.size(0), w.size(1));
  torch::nn::Sequential model = mlp(sizes);
  at::NoGradGuard no_grad;
  size_t i = 0;
  for (const auto& m : model->children()) {
    if (auto* l = m->as<torch::nn::Linear>()) {
      l->weight.copy_(weights[i]);
      l->bias.copy_(biases[i]);
      ++i;
    }
  }
  return model;
}

void quantize_with(torch::nn::Sequential& model, const std::string& config_json,
                   const std::vector<at::Tensor>& calib) {
  const mopt::QuantizeConfig config = mopt::QuantizeConfig::from_json(config_json);
  mopt::ForwardLoop loop = nullptr;
  if (!calib.empty()) {
    loop = [&](torch::nn::Module&) {
      for (const auto& batch : calib) model->forward(batch);
    };
  }
  mopt::quantize(model, config, loop);
}

// Every quantizer's learned-scales view: name -> (amax_pre, amax_post, learnable_amax, tied).
py::dict lsq_view(torch::nn::Module& model) {
  py::dict out;
  for (auto& [name, q] : mopt::named_quantizers(model)) {
    const bool tied = q->lsq() && q->lsq()->tied;
    out[py::str(name)] = py::make_tuple(optional_tensor(q->amax_pre()),
                                        optional_tensor(q->amax_post()), q->learnable_amax(),
                                        tied);
  }
  return out;
}

py::list parameter_names(torch::nn::Module& model) {
  py::list names;
  for (const auto& p : model.named_parameters()) names.append(p.key());
  return names;
}

// Quantizes an MLP (mlp_with) with `config_json` (an lsq algorithm), then runs `steps` Adam
// steps (learning rate `lr`) on every parameter, weights and learned amaxes, minimizing the
// mean squared error of model(x) to `target`; saves to `save_path` unless it is empty. Returns
// the losses, the output for x afterwards, the summary, the parameter names and lsq_view.
py::dict train_lsq_mlp(const std::vector<at::Tensor>& weights,
                       const std::vector<at::Tensor>& biases, const std::string& config_json,
                       const std::vector<at::Tensor>& calib, const at::Tensor& x,
                       const at::Tensor& target, int64_t steps, double lr,
                       const std::string& save_path) {
  torch::nn::Sequential model = mlp_with(weights, biases);
  quantize_with(model, config_json, calib);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(lr));
  std::vector<double> losses;
  {
    py::gil_scoped_release no_gil;  // the autograd engine runs without the GIL
    for (int64_t i = 0; i < steps; ++i) {
      optimizer.zero_grad();
      at::Tensor loss = torch::nn::functional::mse_loss(model->forward(x), target);
      loss.backward();
      optimizer.step();
      losses.push_back(loss.item<double>());
    }
  }
  if (!save_path.empty()) mopt::save(model, save_path);
  at::NoGradGuard no_grad;
  py::dict out;
  out["losses"] = losses;
  out["out"] = model->forward(x);
  std::ostringstream summary;
  mopt::print_quant_summary(*model, summary);
  out["summary"] = summary.str();
  out["parameters"] = parameter_names(*model);
  out["lsq"] = lsq_view(*model);
  return out;
}

// A fresh mlp() of (out, in) `sizes` restored by mopt::restore from `path`: the output for x,
// the summary, the parameter names and lsq_view.
py::dict restore_mlp(const std::vector<std::pair<int64_t, int64_t>>& sizes,
                     const std::string& path, const at::Tensor& x) {
  torch::nn::Sequential model = mlp(sizes);
  mopt::restore(model, path);
  at::NoGradGuard no_grad;
  py::dict out;
  out["out"] = model->forward(x);
  std::ostringstream summary;
  mopt::print_quant_summary(*model, summary);
  out["summary"] = summary.str();
  out["parameters"] = parameter_names(*model);
  out["lsq"] = lsq_view(*model);
  return out;
}

// Linear layers with the given weights and ReLU between them, quantized by mopt::quantize with
// `config_json` while `calib` batches run through. Returns the output for `x`, the summary, the
// weights afterwards and every quantizer's (amax, pre_quant_scale).
py::dict quantize_mlp(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                      const std::string& config_json, const std::vector<at::Tensor>& calib,
                      const at::Tensor& x) {
  torch::nn::Sequential model = mlp_with(weights, biases);
  quantize_with(model, config_json, calib);
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
  m.def("train_lsq_mlp", torch::wrap_pybind_function(train_lsq_mlp), py::arg("weights"),
        py::arg("biases"), py::arg("config_json"), py::arg("calib"), py::arg("x"),
        py::arg("target"), py::arg("steps"), py::arg("lr"), py::arg("save_path") = "",
        "Quantizes a Linear/ReLU MLP with learned scales, trains it with torch::optim::Adam in "
        "C++ and saves it with mopt::save; returns a dict (losses, out, summary, parameters, "
        "lsq: name -> (amax_pre, amax_post, learnable_amax, tied)).");
  m.def("restore_mlp", torch::wrap_pybind_function(restore_mlp), py::arg("sizes"),
        py::arg("path"), py::arg("x"),
        "Restores a fresh Linear/ReLU MLP of (out, in) sizes with mopt::restore; returns a dict "
        "(out, summary, parameters, lsq).");
}
