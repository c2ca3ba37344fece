// include/mopt/torch: the quantize config of the module API (predefined configs, recipes,
// QuantizeConfig validation).

#include "bindings.h"
#include "mopt/core/error.h"
#include "mopt/torch/configs.h"

namespace py = pybind11;

namespace mopt::python {

void bind_torch(py::module_& m) {
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
  m.def(
      "quant_classes",
      [] {
        py::list rows;
        for (const QuantClass& c : quant_classes()) rows.append(py::make_tuple(c.name, c.kind));
        return rows;
      },
      "[(config name, kind)] of the built-in quantized module classes (kind: linear, conv, "
      "conv_transpose, input_only).");
  m.def("predefined_config_names", &predefined_config_names,
        "Names of the predefined configs the C++ API defines.");
  m.def(
      "normalize_quantize_config",
      [](const std::string& json) { return QuantizeConfig::from_json(json).to_json(); },
      py::arg("json"), "Parses and validates a quantize config with the C++ QuantizeConfig.");
}

}  // namespace mopt::python
