#include "bindings.h"
#include "mopt/quant/config.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/formats.h"
#include "mopt/quant/quantize_tensor.h"

namespace py = pybind11;

namespace mopt::python {
namespace {

const char* element_name(ElementEncoding e) {
  switch (e) {
    case ElementEncoding::kInteger: return "integer";
    case ElementEncoding::kMinifloat: return "minifloat";
    case ElementEncoding::kLookupTable: return "lookup_table";
  }
  return "unknown";
}

const char* scale_name(ScaleEncoding s) {
  switch (s) {
    case ScaleEncoding::kFloat: return "float";
    case ScaleEncoding::kE4M3TensorScaled: return "e4m3_tensor_scaled";
    case ScaleEncoding::kE8M0: return "e8m0";
    case ScaleEncoding::kAbsmaxDoubleQuant: return "absmax_double_quant";
  }
  return "unknown";
}

py::dict family_dict(const FormatFamilyInfo& r) {
  py::dict d;
  d["family"] = r.name;
  d["element_encoding"] = element_name(r.element);
  d["scale_encoding"] = scale_name(r.scale);
  d["default_block_size"] = r.default_block_size;
  d["scale_bits"] = r.scale_bits;
  d["tensor_scale_bits"] = r.tensor_scale_bits;
  d["kernel"] = r.kernel;
  d["dynamic_keeps_tensor_amax"] = r.dynamic_keeps_tensor_amax;
  d["histogram_calibration"] = r.histogram_calibration;
  d["entropy_calibration"] = r.entropy_calibration;
  d["gptq"] = r.gptq;
  d["awq_lite"] = r.awq_lite;
  d["awq_clip"] = r.awq_clip;
  d["exportable"] = r.exportable;
  return d;
}

}  // namespace

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
      "format_table",
      [] {
        py::list rows;
        for (const auto& row : format_table()) rows.append(family_dict(row));
        return rows;
      },
      "The format table: one dict per format family (include/mopt/quant/formats.h).");
  m.def(
      "format_info",
      [](const std::string& json) {
        const ResolvedFormat f = resolve_format(parse_quantizer_config_cached(json));
        py::dict d = family_dict(*f.info);
        d["family"] = f.info->name;
        d["name"] = f.name;
        d["element_bits"] = f.element_bits;
        d["exponent_bits"] = f.exponent_bits;
        d["mantissa_bits"] = f.mantissa_bits;
        d["block_size"] = f.block_size;
        d["dynamic"] = f.dynamic;
        d["calibrated"] = f.calibrated;
        return d;
      },
      py::arg("json"),
      "The format a quantizer config (JSON) resolves to: its format-table row plus the concrete "
      "element format (name, element_bits, block_size, dynamic, calibrated).");
  m.def(
      "weight_storage_bits",
      [](const std::vector<std::string>& stage_json, const std::vector<int64_t>& shape,
         int64_t pre_quant_scale_numel) {
        std::vector<QuantizerAttributeConfig> stages;
        for (const auto& j : stage_json) stages.push_back(parse_quantizer_config_cached(j));
        const WeightStorage s = weight_storage_bits(stages, shape, pre_quant_scale_numel);
        return py::make_tuple(s.element_bits, s.scale_bits);
      },
      py::arg("stages"), py::arg("shape"), py::arg("pre_quant_scale_numel") = 0,
      "(element bits, scale bits) of a weight of `shape` quantized by the quantizer configs "
      "`stages` (JSON, in order), as the format table prices it.");
  m.def("quantizer_attribute_keys", &quantizer_attribute_keys,
        "Keys of QuantizerAttributeConfig in declaration order.");
  m.def("minifloat_max_value", &minifloat_max_value, py::arg("exponent_bits"),
        py::arg("mantissa_bits"), "Largest finite value of a minifloat format.");
}

}  // namespace mopt::python
