// Declarations of the per-area binding functions called by module.cpp.
#pragma once

#include <torch/extension.h>

namespace mopt::python {

void bind_quant(pybind11::module_& m);
void bind_calib(pybind11::module_& m);
void bind_torch_api(pybind11::module_& m);
void bind_histogram(pybind11::module_& m);
void bind_algorithms(pybind11::module_& m);
void bind_gptq(pybind11::module_& m);

}  // namespace mopt::python
