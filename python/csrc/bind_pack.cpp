// include/mopt/quant/pack.h: packed weights (mopt.quantization.pack_weight, mtq.compress).
#include <pybind11/stl.h>

#include "bindings.h"
#include "mopt/quant/pack.h"

namespace py = pybind11;

namespace mopt::python {
namespace {

py::object optional_tensor(const at::Tensor& t) {
  return t.defined() ? py::cast(t) : py::none();
}

}  // namespace

void bind_pack(py::module_& m) {
  using release_gil = py::call_guard<py::gil_scoped_release>;
  py::class_<PackedWeight>(m, "PackedWeight",
                           "A weight in its quantizer's format: codes, scales and a dequantize "
                           "that gives the fake-quantized weight bit for bit (see "
                           "include/mopt/quant/pack.h for every format's layout).")
      .def_property_readonly("format", [](const PackedWeight& w) { return w.format; })
      .def_property_readonly("shape",
                             [](const PackedWeight& w) { return py::tuple(py::cast(w.shape)); })
      .def_property_readonly("block_size", [](const PackedWeight& w) { return w.block_size; })
      .def_property_readonly("signed", [](const PackedWeight& w) { return w.is_signed; })
      .def_property_readonly("dtype", [](const PackedWeight& w) {
        return py::module_::import("torch").attr(
            w.dtype == at::kFloat ? "float32" : w.dtype == at::kHalf ? "float16" : "bfloat16");
      })
      .def_property_readonly("code_bits", [](const PackedWeight& w) { return w.code_bits; })
      .def_property_readonly("codes", &PackedWeight::codes)
      .def_property_readonly("data",
                             [](const PackedWeight& w) {
                               std::vector<int64_t> s(w.shape.begin(), w.shape.end() - 1);
                               s.push_back(w.data.size(1));
                               return w.data.reshape(s);
                             })
      .def_property_readonly("scale", &PackedWeight::scale)
      .def_property_readonly("scale_2",
                             [](const PackedWeight& w) { return optional_tensor(w.scale_2()); })
      .def_property_readonly("scale_offset",
                             [](const PackedWeight& w) { return optional_tensor(w.scale_offset); })
      .def_property_readonly("zero_point",
                             [](const PackedWeight& w) { return optional_tensor(w.zero_point); })
      .def_property_readonly("amax", [](const PackedWeight& w) { return optional_tensor(w.amax); },
                             "int / minifloat: the amax per scale the kernels divide by; NF4 "
                             "double quantization: the dq amax per group (None otherwise)")
      .def_property_readonly("nbytes", &PackedWeight::nbytes,
                             "Bytes of every stored tensor (codes and scales).")
      .def("dequantize", &PackedWeight::dequantize, py::arg("dtype") = py::none(), release_gil(),
           "The dequantized weight (default: the weight's dtype), computed by the C++ kernel; "
           "equal to the fake-quantized weight bit for bit.")
      .def("tensors", &PackedWeight::tensors,
           "The stored tensors by name (what from_parts takes back).")
      .def("metadata_json", &PackedWeight::metadata_json,
           "Everything but the tensors, as JSON.")
      .def_static("from_parts", &PackedWeight::from_parts, py::arg("metadata_json"),
                  py::arg("tensors"),
                  "Rebuilds a PackedWeight from metadata_json() and tensors() (checked).")
      .def("__repr__", [](const PackedWeight& w) {
        std::string s = "PackedWeight(format=" + w.format + ", shape=[";
        for (size_t i = 0; i < w.shape.size(); ++i) {
          s += (i ? ", " : "") + std::to_string(w.shape[i]);
        }
        return s + "], block_size=" + std::to_string(w.block_size) +
               ", nbytes=" + std::to_string(w.nbytes()) + ")";
      });
  m.def("pack_weight", &pack_weight, py::arg("weight"), py::arg("core"), py::arg("amax"),
        py::arg("pre_quant_scale") = py::none(), py::arg("zero_point") = py::none(),
        release_gil(),
        "Packs `weight` as the quantizer core `core` (with its amax, pre_quant_scale and "
        "zero_point buffers) fake-quantizes it.");
}

}  // namespace mopt::python
