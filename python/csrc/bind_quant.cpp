#include "bindings.h"
#include "mopt/quant/config.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"

namespace py = pybind11;

namespace mopt::python {

void bind_quant(py::module_& m) {
  m.def(
      "normalize_quantizer_config",
      [](const std::string& json) { return QuantizerAttributeConfig::from_json(json).to_json(); },
      py::arg("json"),
      "Validates a QuantizerAttributeConfig given as JSON and returns it with every field set.");
  m.def(
      "update_quantizer_config",
      [](const std::string& base, const std::string& update) {
        return QuantizerAttributeConfig::from_json(base).updated(update).to_json();
      },
      py::arg("base"), py::arg("update"),
      "Applies the keys of `update` on top of the normalized config `base`.");
  m.def(
      "quantizer_amax_axes",
      [](const std::string& json, int64_t ndim) {
        return quantizer_amax_axes(parse_quantizer_config_cached(json), ndim);
      },
      py::arg("json"), py::arg("ndim"),
      "Axes of the calibration view that a calibrator keeps in amax.");
  m.def(
      "quant_kind",
      [](const std::string& json) {
        switch (quant_kind(parse_quantizer_config_cached(json))) {
          case QuantKind::kInt: return "int";
          case QuantKind::kMinifloat: return "minifloat";
          case QuantKind::kNVFP4: return "nvfp4";
          case QuantKind::kMX: return "mx";
          case QuantKind::kNF4: return "nf4";
        }
        return "unknown";
      },
      py::arg("json"), "Format a config resolves to: int, minifloat, nvfp4, mx or nf4.");
  m.def("quantizer_attribute_keys", &quantizer_attribute_keys,
        "Keys of QuantizerAttributeConfig in declaration order.");
  m.def("minifloat_max_value", &minifloat_max_value, py::arg("exponent_bits"),
        py::arg("mantissa_bits"), "Largest finite value of a minifloat format.");
}

}  // namespace mopt::python
