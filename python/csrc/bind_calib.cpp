#include "bindings.h"
#include "mopt/calib/max_calibrator.h"

namespace py = pybind11;

namespace mopt::python {

void bind_calib(py::module_& m) {
  py::class_<MaxCalibrator>(m, "MaxCalibrator")
      .def(py::init<int64_t, std::optional<std::vector<int64_t>>, bool, bool>(),
           py::arg("num_bits") = 8, py::arg("axis") = py::none(), py::arg("unsigned") = false,
           py::arg("track_amax") = false)
      .def("collect", &MaxCalibrator::collect, py::arg("x"))
      .def("compute_amax", &MaxCalibrator::compute_amax)
      .def("reset", &MaxCalibrator::reset)
      .def_property_readonly("num_bits", &MaxCalibrator::num_bits)
      .def_property_readonly("axis", &MaxCalibrator::axis)
      .def_property_readonly("unsigned", &MaxCalibrator::is_unsigned)
      .def_property_readonly("track_amax", &MaxCalibrator::track_amax)
      .def_property_readonly("amaxs", &MaxCalibrator::amaxs);
}

}  // namespace mopt::python
