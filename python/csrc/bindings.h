// Declarations shared by the binding files: one bind_<folder>() per include/mopt/<folder>, called
// by module.cpp, and the conversions between Python values and the C++ types they share.
#pragma once

#include <torch/extension.h>

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "mopt/calib/calibrator.h"
#include "mopt/quant/config.h"

namespace mopt::python {

void bind_core(pybind11::module_& m);
void bind_quant(pybind11::module_& m);
void bind_pack(pybind11::module_& m);
void bind_calib(pybind11::module_& m);
void bind_algorithms(pybind11::module_& m);
void bind_torch(pybind11::module_& m);
void bind_opt(pybind11::module_& m);
void bind_sparsity(pybind11::module_& m);
void bind_cache_metrics(pybind11::module_& m);
void bind_cache(pybind11::module_& m);

/// Collects the C++ warnings raised while it lives and turns them into Python UserWarnings of the
/// calling Python code (torch's own handler would point them at mopt's C++ sources).
class PythonWarnings : public c10::WarningHandler {
 public:
  PythonWarnings();
  ~PythonWarnings() override;
  void process(const c10::Warning& warning) override { buffer_.push_back(warning.msg()); }
  /// Issues the collected warnings (the GIL held); raises when a warning filter makes one an
  /// error.
  void flush();

 private:
  c10::WarningHandler* previous_;
  std::vector<std::string> buffer_;
};

template <typename R, typename... Args>
auto no_gil_with_warnings_impl(std::function<R(Args...)> fn, bool release) {
  return [fn, release](Args... args) -> R {
    PythonWarnings warnings;
    if constexpr (std::is_void_v<R>) {
      {
        std::optional<pybind11::gil_scoped_release> no_gil;
        if (release) no_gil.emplace();
        fn(std::forward<Args>(args)...);
      }
      warnings.flush();
    } else {
      std::optional<R> result;
      {
        std::optional<pybind11::gil_scoped_release> no_gil;
        if (release) no_gil.emplace();
        result.emplace(fn(std::forward<Args>(args)...));
      }
      warnings.flush();
      return std::move(*result);
    }
  };
}

/// fn (a lambda with a concrete signature) run without the GIL, its C++ warnings issued as
/// Python warnings of the caller afterwards.
template <typename Fn>
auto no_gil_with_warnings(Fn fn) {
  return no_gil_with_warnings_impl(std::function(fn), true);
}
/// The same with the GIL held (fn touches Python objects).
template <typename Fn>
auto with_warnings(Fn fn) {
  return no_gil_with_warnings_impl(std::function(fn), false);
}

/// None | int | tuple of ints -> kept axes.
std::optional<std::vector<int64_t>> axis_from_py(const pybind11::handle& obj);
/// Kept axes -> None | int | tuple of ints.
pybind11::object axis_to_py(const std::optional<std::vector<int64_t>>& axis);
/// int | (E, M) -> NumBits (TypeError otherwise).
NumBits num_bits_from_py(const pybind11::handle& obj);
pybind11::object num_bits_to_py(const NumBits& nb);

/// A calibrator written in Python (any object with collect / compute_amax / reset), as the C++
/// Calibrator a quantizer core holds. Its kept axes are written to the object's `_axis`.
class PythonCalibrator : public Calibrator {
 public:
  explicit PythonCalibrator(pybind11::object obj);
  ~PythonCalibrator() override;
  void collect(const at::Tensor& x) override;
  c10::optional<at::Tensor> compute_amax(const AmaxRequest& request = {}) const override;
  void reset() override;
  bool has_data() const override { return false; }  // unknown: axes may change at any time
  std::shared_ptr<Calibrator> clone() const override;
  std::string class_name() const override;
  const pybind11::object& object() const { return obj_; }

 protected:
  void on_axis_change() override;

 private:
  pybind11::object obj_;
};

/// The C++ calibrator for a Python value: a built-in calibrator as is, any other object with
/// collect / compute_amax / reset wrapped in PythonCalibrator, None as null.
std::shared_ptr<Calibrator> calibrator_from_py(const pybind11::object& obj);
/// The Python object of a calibrator (the wrapped object for a PythonCalibrator).
pybind11::object calibrator_to_py(const std::shared_ptr<Calibrator>& c);

}  // namespace mopt::python
