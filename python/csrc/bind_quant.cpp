// include/mopt/quant: quantizer configs, the format table, and the quantizer core that
// mtq.nn.TensorQuantizer wraps.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "mopt/core/error.h"
#include "mopt/quant/config.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/formats.h"
#include "mopt/quant/gguf.h"
#include "mopt/quant/quantize_tensor.h"
#include "mopt/quant/quantizer_core.h"

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

py::dict family_dict(const FormatFamilyInfo& r) {
  py::dict d;
  d["family"] = r.name;
  d["element_encoding"] = element_name(r.element);
  d["scale_encoding"] = scale_encoding_name(r.scale);
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

// A calibrator factory calling a Python callable; the callable is released under the GIL.
QuantizerCore::CalibratorFactory python_factory(const py::object& fn) {
  if (fn.is_none()) return nullptr;
  std::shared_ptr<py::object> held(new py::object(fn), [](py::object* o) {
    py::gil_scoped_acquire gil;
    delete o;
  });
  return [held]() {
    py::gil_scoped_acquire gil;
    return calibrator_from_py((*held)());
  };
}

py::dict format_dict(const ResolvedFormat& f) {
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
}

c10::optional<at::Tensor> opt(const py::object& t) {
  if (t.is_none()) return c10::nullopt;
  return t.cast<at::Tensor>();
}

// Property accessors of one of the core's mode flags (set_flags checks the combination).
auto flag_getter(bool QuantizerFlags::*flag) {
  return [flag](const QuantizerCore& c) { return c.flags().*flag; };
}
auto flag_setter(bool QuantizerFlags::*flag) {
  return [flag](QuantizerCore& c, bool value) {
    QuantizerFlags f = c.flags();
    f.*flag = value;
    c.set_flags(f);
  };
}

void bind_quantizer_core(py::module_& m) {
  using release_gil = py::call_guard<py::gil_scoped_release>;
  py::class_<QuantizerCore>(m, "QuantizerCore",
                            "The logic of a TensorQuantizer (flags, calibrator, calibration view, "
                            "amax policy, checks, printing); the module keeps the buffers.")
      .def(py::init([](const std::string& cfg_json, const py::object& calibrator_factory) {
             return QuantizerCore(parse_quantizer_config_cached(cfg_json),
                                  python_factory(calibrator_factory));
           }),
           py::arg("cfg_json"), py::arg("calibrator_factory") = py::none())
      .def("copy_attributes_from", &QuantizerCore::copy_attributes_from, py::arg("other"),
           "set_attributes from another core that never collected (a restore's prototype): its "
           "resolved format and calibrator are reused instead of derived again.")
      .def(
          "set_attributes",
          [](QuantizerCore& c, const std::string& cfg_json, const py::object& factory) {
            c.set_attributes(parse_quantizer_config_cached(cfg_json), python_factory(factory));
          },
          py::arg("cfg_json"), py::arg("calibrator_factory") = py::none())
      .def("copy_attributes_from", &QuantizerCore::copy_attributes_from, py::arg("other"),
           "set_attributes from another core that never collected (a restore's prototype): its "
           "resolved format and calibrator are reused instead of derived again.")
      // copy.deepcopy of a quantized model copies the core with a clone of its calibrator;
      // pickling (torch.save of a whole model) keeps attributes, flags, name and calibrator. A
      // custom calibrator's factory is given back by the owning module (TensorQuantizer).
      .def("__copy__", [](const QuantizerCore& c) { return QuantizerCore(c); })
      .def("__deepcopy__", [](const QuantizerCore& c, py::dict) { return QuantizerCore(c); },
           py::arg("memo"))
      .def(py::pickle(
          [](const QuantizerCore& c) {
            const QuantizerFlags& f = c.flags();
            return py::make_tuple(c.attributes_json(), f.disabled, f.quant, f.calib, c.name(),
                                  calibrator_to_py(c.calibrator()));
          },
          [](const py::tuple& t) {
            if (t.size() != 6) throw py::value_error("QuantizerCore: bad pickled state");
            QuantizerCore c(parse_quantizer_config_cached(t[0].cast<std::string>()));
            c.set_name(t[4].cast<std::string>());
            c.set_calibrator(calibrator_from_py(t[5]));
            c.set_flags(QuantizerFlags{t[1].cast<bool>(), t[2].cast<bool>(), t[3].cast<bool>()});
            return c;
          }))
      .def_property_readonly("attributes_json", &QuantizerCore::attributes_json)
      .def_property_readonly("format", [](const QuantizerCore& c) { return format_dict(c.format()); })
      .def_property_readonly("family", [](const QuantizerCore& c) { return c.format().info->name; })
      .def_property_readonly("is_static", &QuantizerCore::is_static)
      .def_property_readonly("maxbound", &QuantizerCore::maxbound)
      .def("kept_axes", &QuantizerCore::kept_axes, py::arg("ndim"))
      .def_property("disabled", flag_getter(&QuantizerFlags::disabled),
                    flag_setter(&QuantizerFlags::disabled))
      .def_property("if_quant", flag_getter(&QuantizerFlags::quant),
                    flag_setter(&QuantizerFlags::quant))
      .def_property("if_calib", flag_getter(&QuantizerFlags::calib),
                    flag_setter(&QuantizerFlags::calib))
      .def("enable", &QuantizerCore::enable)
      .def("disable", &QuantizerCore::disable)
      .def("enable_quant", &QuantizerCore::enable_quant)
      .def("disable_quant", &QuantizerCore::disable_quant)
      .def("enable_calib", &QuantizerCore::enable_calib)
      .def("disable_calib", &QuantizerCore::disable_calib)
      .def_property(
          "calibrator", [](const QuantizerCore& c) { return calibrator_to_py(c.calibrator()); },
          [](QuantizerCore& c, const py::object& obj) { c.set_calibrator(calibrator_from_py(obj)); })
      .def_property_readonly("needs_calibration", &QuantizerCore::needs_calibration)
      .def(
          "calib_view",
          [](QuantizerCore& c, const at::Tensor& x, const py::object& pqs) {
            return c.calib_view(x, opt(pqs));
          },
          py::arg("x"), py::arg("pre_quant_scale") = py::none())
      .def("collect",
           no_gil_with_warnings(
               [](QuantizerCore& c, const at::Tensor& x, std::optional<at::Tensor> pqs) {
                 c.collect(x, pqs);
               }),
           py::arg("x"), py::arg("pre_quant_scale") = py::none())
      .def("compute_amax",
           no_gil_with_warnings(
               [](QuantizerCore& c, std::optional<std::string> method, int64_t stride,
                  int64_t start_bin, double percentile) {
                 AmaxRequest r;
                 if (method) r.method = parse_histogram_method(*method);
                 r.options = HistogramAmaxOptions{stride, start_bin, percentile};
                 return c.compute_amax(r);
               }),
           py::arg("method") = py::none(), py::kw_only(), py::arg("stride") = 1,
           py::arg("start_bin") = 128, py::arg("percentile") = 99.99)
      .def("reset_calibrator", &QuantizerCore::reset_calibrator)
      .def(
          "make_mse_calibrator",
          [](const QuantizerCore& c, const at::Tensor& amax, int64_t num_steps,
             double start_multiplier, double stop_multiplier) {
            return calibrator_to_py(
                c.make_mse_calibrator(amax, num_steps, start_multiplier, stop_multiplier));
          },
          py::arg("amax"), py::arg("num_steps") = 10, py::arg("start_multiplier") = 0.25,
          py::arg("stop_multiplier") = 4.0)
      .def(
          "amax_to_store",
          [](const QuantizerCore& c, const at::Tensor& value, const py::object& current,
             bool validate) { return c.amax_to_store(value, opt(current), validate); },
          py::arg("value"), py::arg("current") = py::none(), py::arg("validate") = true)
      .def("compute_zero_point", &QuantizerCore::compute_zero_point)
      .def(
          "zero_point_to_store",
          [](const QuantizerCore& c, const at::Tensor& value, const py::object& amax) {
            return c.zero_point_to_store(value, opt(amax));
          },
          py::arg("value"), py::arg("amax") = py::none())
      .def("forward",
           no_gil_with_warnings(
               [](QuantizerCore& c, const at::Tensor& x, std::optional<at::Tensor> amax,
                  std::optional<at::Tensor> pqs, std::optional<at::Tensor> zero_point,
                  std::optional<at::Tensor> amax_post) {
                 return c.forward(x, amax, pqs, zero_point, amax_post);
               }),
           py::arg("x"), py::arg("amax") = py::none(), py::arg("pre_quant_scale") = py::none(),
           py::arg("zero_point") = py::none(), py::arg("amax_post") = py::none())
      .def("forward_config", &QuantizerCore::forward_config, py::arg("has_amax"))
      .def_property("name", &QuantizerCore::name, &QuantizerCore::set_name)
      .def_static("short_amax", [](const py::object& amax) {
        return QuantizerCore::short_amax(opt(amax));
      })
      .def(
          "extra_repr",
          [](const QuantizerCore& c, const py::object& amax, const py::object& pqs) {
            return c.extra_repr(opt(amax), opt(pqs));
          },
          py::arg("amax") = py::none(), py::arg("pre_quant_scale") = py::none())
      .def("__copy__", [](const QuantizerCore& c) { return QuantizerCore(c); })
      .def("__deepcopy__", [](const QuantizerCore& c, py::dict) { return QuantizerCore(c); },
           py::arg("memo"))
      .def(py::pickle(
          [](const QuantizerCore& c) {
            // the attributes, flags and name; what a calibrator collected is not pickled
            return py::make_tuple(c.attributes_json(), c.flags().disabled, c.flags().quant,
                                  c.flags().calib, c.name());
          },
          [](const py::tuple& t) {
            const QuantizerAttributeConfig attr =
                parse_quantizer_config_cached(t[0].cast<std::string>());
            MOPT_CHECK_VALUE(attr.calibrator != "custom", "a quantizer with a Python calibrator "
                             "class cannot be unpickled; save the model's state_dict instead");
            QuantizerCore c(attr);
            c.set_flags(QuantizerFlags{t[1].cast<bool>(), t[2].cast<bool>(), t[3].cast<bool>()});
            c.set_name(t[4].cast<std::string>());
            return c;
          }));
}

}  // namespace

void bind_quant(py::module_& m) {
  bind_quantizer_core(m);
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
        return format_dict(resolve_format(parse_quantizer_config_cached(json)));
      },
      py::arg("json"),
      "The format a quantizer config (JSON) resolves to: its format-table row plus the concrete "
      "element format (name, element_bits, block_size, dynamic, calibrated).");
  m.def("gguf_row_type", &gguf_row_type, py::arg("type"), py::arg("row_len"),
        "The GGUF type llama.cpp stores a row of `row_len` elements in when `type` (q8_0, q4_0, "
        "q4_k) is requested: the type, q5_0 (Q4_K rows a multiple of 32 but not 256) or f32 "
        "(rows that fit no block; mopt leaves them unquantized).");
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
