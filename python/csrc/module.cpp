// mopt._C: objects and helpers for the Python package. Tensor ops are not bound here; they are
// torch.ops.mopt.* operators registered by libmopt.
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "mopt C++ core: quantizer configs, calibrators and algorithm solvers";
  mopt::python::bind_quant(m);
  mopt::python::bind_calib(m);
  mopt::python::bind_torch_api(m);
  mopt::python::bind_histogram(m);
  mopt::python::bind_algorithms(m);
  mopt::python::bind_gptq(m);
}
