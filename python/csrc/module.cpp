// mopt._C: objects and helpers for the Python package, one bind_<folder>() per include/mopt
// folder. Tensor ops are not bound here; they are torch.ops.mopt.* operators registered by
// libmopt.
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "mopt C++ core: formats, quantizer core, calibrators, algorithm solvers, configs";
  mopt::python::bind_core(m);
  mopt::python::bind_quant(m);
  mopt::python::bind_calib(m);
  mopt::python::bind_algorithms(m);
  mopt::python::bind_torch(m);
}
