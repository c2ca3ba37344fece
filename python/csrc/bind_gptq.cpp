#include "bindings.h"
#include "mopt/algorithms/gptq.h"

namespace py = pybind11;

namespace mopt::python {

void bind_gptq(py::module_& m) {
  using algorithms::GptqHessian;
  using algorithms::GptqResult;

  py::class_<GptqHessian>(m, "GptqHessian",
                          "Streams H = 2/n sum x x^T of one linear layer's inputs (fp32).")
      .def(py::init<int64_t, std::string>(), py::arg("in_features"), py::arg("name") = "")
      .def("add_batch", &GptqHessian::add_batch, py::arg("x"),
           "Adds the tokens of x [..., in_features].")
      .def("hessian", &GptqHessian::hessian, "H = 2/n X^T X as [in, in] fp32.")
      .def("reset", &GptqHessian::reset)
      .def_property_readonly("num_samples", &GptqHessian::num_samples)
      .def_property_readonly("in_features", &GptqHessian::in_features)
      .def_property_readonly("name", &GptqHessian::name);

  py::class_<GptqResult>(m, "GptqResult", "Quantized weight, quantizer amax and diagnostics.")
      .def_readonly("weight", &GptqResult::weight)
      .def_readonly("amax", &GptqResult::amax)
      .def_readonly("loss", &GptqResult::loss)
      .def_readonly("percdamp", &GptqResult::percdamp)
      .def_readonly("dead_columns", &GptqResult::dead_columns);

  m.def(
      "gptq_quantize_weight",
      [](const at::Tensor& weight, const at::Tensor& hessian, const std::string& cfg_json,
         int64_t block_size, double percdamp, bool act_order,
         const c10::optional<at::Tensor>& tensor_amax, const std::string& name) {
        algorithms::GptqOptions opt;
        opt.block_size = block_size;
        opt.percdamp = percdamp;
        opt.act_order = act_order;
        py::gil_scoped_release no_gil;
        return algorithms::gptq_quantize_weight(weight, hessian, cfg_json, opt, tensor_amax, name);
      },
      py::arg("weight"), py::arg("hessian"), py::arg("cfg_json"), py::arg("block_size") = 128,
      py::arg("percdamp") = 0.01, py::arg("act_order") = false, py::arg("tensor_amax") = py::none(),
      py::arg("name") = "",
      "GPTQ of weight [out, in] with Hessian [in, in] for the weight quantizer config cfg_json.");

  m.def("gptq_check_weight_config", &algorithms::gptq_check_weight_config, py::arg("cfg_json"),
        py::arg("out_features"), py::arg("in_features"), py::arg("name") = "",
        "Raises the error gptq_quantize_weight would raise for this weight quantizer config.");

  m.def(
      "gptq_hessian_inverse",
      [](const at::Tensor& hessian, double percdamp, bool act_order, const std::string& name) {
        const auto r = algorithms::gptq_hessian_inverse(hessian, percdamp, act_order, name);
        return py::make_tuple(r.upper, r.perm, r.percdamp, r.dead_columns);
      },
      py::arg("hessian"), py::arg("percdamp") = 0.01, py::arg("act_order") = false,
      py::arg("name") = "",
      "(U, perm, percdamp_used, dead_columns): U^T U = (H[perm][:, perm] + damp I)^-1.");
}

}  // namespace mopt::python
