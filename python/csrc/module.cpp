// mopt._C: objects and helpers for the Python package, one bind_<folder>() per include/mopt
// folder. Tensor ops are not bound here; they are torch.ops.mopt.* operators registered by
// libmopt.
#include "bindings.h"

namespace {

// True when `s` is valid UTF-8 (what Python needs to turn an error message into a str).
bool valid_utf8(const char* s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  while (*p) {
    int n = *p < 0x80 ? 0 : (*p >> 5) == 6 ? 1 : (*p >> 4) == 14 ? 2 : (*p >> 3) == 30 ? 3 : -1;
    if (n < 0) return false;
    ++p;
    for (; n > 0; --n, ++p) {
      if ((*p >> 6) != 2) return false;
    }
  }
  return true;
}

std::string escaped(const char* s) {
  std::string out;
  for (const auto* p = reinterpret_cast<const unsigned char*>(s); *p; ++p) {
    if (*p < 0x80) {
      out += static_cast<char>(*p);
    } else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[*p >> 4];
      out += hex[*p & 15];
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  // An error message quoting bytes of a hostile file may not be valid UTF-8; torch's translator
  // would then raise UnicodeDecodeError instead of the error. Such messages are escaped, with the
  // exception type kept; every other exception goes on to torch's and pybind11's translators.
  pybind11::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::Error& e) {
      if (valid_utf8(e.what())) throw;
      PyObject* type = PyExc_RuntimeError;
      if (dynamic_cast<const c10::ValueError*>(&e)) type = PyExc_ValueError;
      if (dynamic_cast<const c10::TypeError*>(&e)) type = PyExc_TypeError;
      if (dynamic_cast<const c10::NotImplementedError*>(&e)) type = PyExc_NotImplementedError;
      if (dynamic_cast<const c10::IndexError*>(&e)) type = PyExc_IndexError;
      PyErr_SetString(type, escaped(e.what_without_backtrace()).c_str());
    }
  });
  m.doc() = "mopt C++ core: formats, quantizer core, calibrators, algorithm solvers, configs";
  mopt::python::bind_core(m);
  mopt::python::bind_quant(m);
  mopt::python::bind_pack(m);
  mopt::python::bind_calib(m);
  mopt::python::bind_algorithms(m);
  mopt::python::bind_torch(m);
  mopt::python::bind_opt(m);
  mopt::python::bind_sparsity(m);
  mopt::python::bind_cache_metrics(m);
  mopt::python::bind_cache(m);
}
