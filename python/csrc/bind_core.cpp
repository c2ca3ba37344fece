// include/mopt/core: the wildcard matcher every config pattern goes through, and the process
// group calibration reduces over.
#include <pybind11/stl.h>

#include "bindings.h"
#include "mopt/core/distributed.h"
#include "mopt/core/fnmatch.h"

namespace py = pybind11;

namespace mopt::python {

PythonWarnings::PythonWarnings() : previous_(c10::WarningUtils::get_warning_handler()) {
  c10::WarningUtils::set_warning_handler(this);
}

PythonWarnings::~PythonWarnings() {
  c10::WarningUtils::set_warning_handler(previous_);
  if (buffer_.empty()) return;
  // an exception is on its way: the warnings still reach Python, but cannot raise
  py::gil_scoped_acquire gil;
  for (const auto& msg : buffer_) {
    if (PyErr_WarnEx(PyExc_UserWarning, msg.c_str(), 1) < 0) PyErr_Clear();
  }
}

void PythonWarnings::flush() {
  c10::WarningUtils::set_warning_handler(previous_);
  std::vector<std::string> pending;
  pending.swap(buffer_);
  for (const auto& msg : pending) {
    if (PyErr_WarnEx(PyExc_UserWarning, msg.c_str(), 1) < 0) throw py::error_already_set();
  }
  c10::WarningUtils::set_warning_handler(this);
}

namespace {

// `with _C.CalibrationGroup(name, rank, size, device):` makes the group the calibration group.
class CalibrationGroupContext {
 public:
  explicit CalibrationGroupContext(std::optional<ProcessGroup> group) : group_(std::move(group)) {}
  void enter() { scope_ = std::make_unique<CalibrationGroupScope>(group_); }
  void exit() { scope_.reset(); }

 private:
  std::optional<ProcessGroup> group_;
  std::unique_ptr<CalibrationGroupScope> scope_;
};

}  // namespace

void bind_core(py::module_& m) {
  m.def("fnmatch", &fnmatch, py::arg("name"), py::arg("pattern"),
        "The wildcard matcher of every quant_cfg pattern, in Python and C++ "
        "(fnmatch.fnmatchcase semantics: case-sensitive, *, ?, [seq], [!seq]).");

  py::class_<CalibrationGroupContext>(m, "CalibrationGroup",
                                      "Context manager: calibration inside it reduces amax, "
                                      "histograms and Hessians over a torch.distributed group.")
      .def(py::init([](const std::string& name, int64_t rank, int64_t size,
                       const std::string& device) {
             return CalibrationGroupContext(ProcessGroup{name, rank, size, c10::Device(device)});
           }),
           py::arg("name"), py::arg("rank"), py::arg("size"), py::arg("device") = "cpu")
      .def("__enter__", [](CalibrationGroupContext& c) { c.enter(); })
      .def("__exit__", [](CalibrationGroupContext& c, py::args) { c.exit(); });
  m.def(
      "calibration_group",
      []() -> py::object {
        const auto& g = calibration_group();
        if (!g) return py::none();
        return py::make_tuple(g->name, g->rank, g->size, g->device.str());
      },
      "(name, rank, size, device) of the current calibration group, or None.");
}

}  // namespace mopt::python
