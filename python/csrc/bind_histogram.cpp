// Histogram and MSE calibrators, and the histogram amax searches, for mopt.quantization.calib.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "mopt/calib/histogram_calibrator.h"
#include "mopt/calib/mse_calibrator.h"

namespace py = pybind11;

namespace mopt::python {
namespace {

// num_bits as the Python config writes it: an int, or (exponent_bits, mantissa_bits).
NumBits num_bits_from_py(const py::handle& obj) {
  if (py::isinstance<py::bool_>(obj)) {
    throw py::type_error("num_bits must be an int or an (exponent, mantissa) tuple, got a bool");
  }
  if (py::isinstance<py::int_>(obj)) return NumBits::integer(obj.cast<int>());
  if (py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj)) {
    const auto seq = obj.cast<py::sequence>();
    if (seq.size() == 2 && py::isinstance<py::int_>(seq[0]) && py::isinstance<py::int_>(seq[1])) {
      return NumBits::minifloat(seq[0].cast<int>(), seq[1].cast<int>());
    }
  }
  throw py::type_error("num_bits must be an int or an (exponent, mantissa) tuple, got " +
                       py::repr(obj).cast<std::string>());
}

py::object num_bits_to_py(const NumBits& nb) {
  if (nb.is_float) return py::make_tuple(nb.exponent, nb.mantissa);
  return py::int_(nb.bits);
}

}  // namespace

void bind_histogram(py::module_& m) {
  py::class_<HistogramCalibrator>(m, "HistogramCalibrator")
      .def(py::init([](const py::object& num_bits, std::optional<std::vector<int64_t>> axis,
                       bool is_unsigned, int64_t num_bins, bool skip_zeros) {
             return HistogramCalibrator(num_bits_from_py(num_bits), std::move(axis), is_unsigned,
                                        num_bins, skip_zeros);
           }),
           py::arg("num_bits") = 8, py::arg("axis") = py::none(), py::arg("unsigned") = false,
           py::arg("num_bins") = 2048, py::arg("skip_zeros") = false)
      .def("collect", &HistogramCalibrator::collect, py::arg("x"))
      .def(
          "compute_amax",
          [](const HistogramCalibrator& self, const std::string& method, int64_t stride,
             int64_t start_bin, double percentile) {
            return self.compute_amax(parse_histogram_method(method),
                                     HistogramAmaxOptions{stride, start_bin, percentile});
          },
          py::arg("method"), py::kw_only(), py::arg("stride") = 1, py::arg("start_bin") = 128,
          py::arg("percentile") = 99.99)
      .def("reset", &HistogramCalibrator::reset)
      .def("histogram", &HistogramCalibrator::histogram, py::arg("channel") = 0)
      .def("bin_edges", &HistogramCalibrator::bin_edges, py::arg("channel") = 0)
      .def_property_readonly("channels", &HistogramCalibrator::channels)
      .def_property_readonly(
          "num_bits", [](const HistogramCalibrator& c) { return num_bits_to_py(c.num_bits()); })
      .def_property_readonly("axis", &HistogramCalibrator::axis)
      .def_property_readonly("unsigned", &HistogramCalibrator::is_unsigned)
      .def_property_readonly("num_bins", &HistogramCalibrator::num_bins)
      .def_property_readonly("skip_zeros", &HistogramCalibrator::skip_zeros);

  py::class_<MseCalibrator>(m, "MseCalibrator")
      .def(py::init<at::Tensor, std::optional<std::vector<int64_t>>, int64_t, double, double,
                    MseCalibrator::QuantFunc, MseCalibrator::ErrorFunc>(),
           py::arg("amax"), py::arg("axis") = py::none(), py::arg("num_steps") = 10,
           py::arg("start_multiplier") = 0.25, py::arg("stop_multiplier") = 4.0,
           py::arg("quant_func") = py::none(), py::arg("error_func") = py::none())
      .def_static(
          "for_quantizer",
          [](at::Tensor amax, std::optional<std::vector<int64_t>> axis, int64_t num_steps,
             double start_multiplier, double stop_multiplier, const std::string& cfg_json) {
            return MseCalibrator(std::move(amax), std::move(axis), num_steps, start_multiplier,
                                 stop_multiplier, quantizer_view_quant_func(cfg_json));
          },
          py::arg("amax"), py::arg("axis"), py::arg("num_steps"), py::arg("start_multiplier"),
          py::arg("stop_multiplier"), py::arg("cfg_json"),
          "An MseCalibrator whose quant_func fake-quantizes a quantizer's calibration view in "
          "C++ (the quantizer is described by its QuantizerAttributeConfig JSON).")
      .def("collect", &MseCalibrator::collect, py::arg("x"))
      .def("compute_amax", &MseCalibrator::compute_amax)
      .def("reset", &MseCalibrator::reset)
      .def_property_readonly("initial_amax", &MseCalibrator::initial_amax)
      .def_property_readonly("axis", &MseCalibrator::axis)
      .def_property_readonly("num_steps", &MseCalibrator::num_steps)
      .def_property_readonly("candidates",
                             [](const MseCalibrator& c) -> std::optional<at::Tensor> {
                               if (!c.candidates().defined()) return std::nullopt;
                               return c.candidates();
                             })
      .def_property_readonly("losses", &MseCalibrator::losses);

  m.def("histogram_amax_entropy", &histogram_amax_entropy, py::arg("counts"), py::arg("edges"),
        py::arg("num_bits") = 8, py::arg("unsigned") = false, py::arg("stride") = 1,
        py::arg("start_bin") = 128, "Entropy (KL) amax of one histogram.");
  m.def("histogram_amax_percentile", &histogram_amax_percentile, py::arg("counts"),
        py::arg("edges"), py::arg("percentile") = 99.99, "Percentile amax of one histogram.");
  m.def(
      "histogram_amax_mse",
      [](const at::Tensor& counts, const at::Tensor& edges, const py::object& num_bits,
         bool is_unsigned, int64_t stride, int64_t start_bin) {
        return histogram_amax_mse(counts, edges, num_bits_from_py(num_bits), is_unsigned, stride,
                                  start_bin);
      },
      py::arg("counts"), py::arg("edges"), py::arg("num_bits") = 8, py::arg("unsigned") = false,
      py::arg("stride") = 1, py::arg("start_bin") = 128, "MSE amax of one histogram.");
}

}  // namespace mopt::python
