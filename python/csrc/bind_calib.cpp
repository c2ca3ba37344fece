// include/mopt/calib: the calibrators. The C++ classes are the Python classes of mtq.calib
// (MaxCalibrator, HistogramCalibrator, MseCalibrator), so a quantizer's calibrator is the same
// object in C++ and Python; a calibrator written in Python (any object with collect /
// compute_amax / reset) is wrapped in PythonCalibrator when a quantizer takes it.
#include <cmath>
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "mopt/calib/histogram_calibrator.h"
#include "mopt/calib/step_calibrator.h"
#include "mopt/calib/max_calibrator.h"
#include "mopt/calib/mse_calibrator.h"
#include "mopt/core/error.h"

namespace py = pybind11;

namespace mopt::python {

std::optional<std::vector<int64_t>> axis_from_py(const py::handle& obj) {
  if (obj.is_none()) return std::nullopt;
  if (py::isinstance<py::bool_>(obj)) throw py::type_error("axis must be an int or a tuple of ints");
  if (py::isinstance<py::int_>(obj)) return std::vector<int64_t>{obj.cast<int64_t>()};
  if (py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj)) {
    std::vector<int64_t> axes;
    for (const auto& a : obj.cast<py::sequence>()) {
      if (!py::isinstance<py::int_>(a) || py::isinstance<py::bool_>(a)) {
        throw py::type_error("axis must contain ints, got " + py::repr(obj).cast<std::string>());
      }
      axes.push_back(a.cast<int64_t>());
    }
    return axes;
  }
  throw py::type_error("axis must be None, an int or a tuple of ints, got " +
                       py::repr(obj).cast<std::string>());
}

py::object axis_to_py(const std::optional<std::vector<int64_t>>& axis) {
  if (!axis) return py::none();
  if (axis->size() == 1) return py::int_((*axis)[0]);
  py::tuple t(axis->size());
  for (size_t i = 0; i < axis->size(); ++i) t[i] = (*axis)[i];
  return t;
}

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

PythonCalibrator::PythonCalibrator(py::object obj) : obj_(std::move(obj)) {}

PythonCalibrator::~PythonCalibrator() {
  py::gil_scoped_acquire gil;
  obj_ = py::object();
}

void PythonCalibrator::collect(const at::Tensor& x) {
  py::gil_scoped_acquire gil;
  obj_.attr("collect")(x);
}

c10::optional<at::Tensor> PythonCalibrator::compute_amax(const AmaxRequest& request) const {
  py::gil_scoped_acquire gil;
  py::object amax = obj_.attr("compute_amax")();
  if (amax.is_none()) return c10::nullopt;
  return amax.cast<at::Tensor>();
}

void PythonCalibrator::reset() {
  py::gil_scoped_acquire gil;
  obj_.attr("reset")();
}

std::shared_ptr<Calibrator> PythonCalibrator::clone() const {
  py::gil_scoped_acquire gil;
  return std::make_shared<PythonCalibrator>(py::module_::import("copy").attr("deepcopy")(obj_));
}

std::string PythonCalibrator::class_name() const {
  py::gil_scoped_acquire gil;
  return py::type::of(obj_).attr("__name__").cast<std::string>();
}

void PythonCalibrator::on_axis_change() {
  // Python calibrators read the kept axes from `_axis`, as the reference's do.
  py::gil_scoped_acquire gil;
  if (py::hasattr(obj_, "_axis") || py::hasattr(obj_, "__dict__")) {
    try {
      obj_.attr("_axis") = axis_ && !axis_->empty()
                               ? py::object(py::tuple(py::cast(*axis_)))
                               : py::object(py::none());
    } catch (const py::error_already_set&) {
      // a read-only _axis: the calibrator keeps its own
    }
  }
}

std::shared_ptr<Calibrator> calibrator_from_py(const py::object& obj) {
  if (obj.is_none()) return nullptr;
  if (py::isinstance<Calibrator>(obj)) return obj.cast<std::shared_ptr<Calibrator>>();
  for (const char* method : {"collect", "compute_amax", "reset"}) {
    if (!py::hasattr(obj, method)) {
      throw py::type_error("a calibrator needs collect(), compute_amax() and reset(); " +
                           py::type::of(obj).attr("__name__").cast<std::string>() + " has no " +
                           method + "()");
    }
  }
  return std::make_shared<PythonCalibrator>(obj);
}

py::object calibrator_to_py(const std::shared_ptr<Calibrator>& c) {
  if (!c) return py::none();
  if (auto* p = dynamic_cast<PythonCalibrator*>(c.get())) return p->object();
  return py::cast(c);
}

namespace {

// The reference's private attributes that scripts read, common to every built-in calibrator.
template <typename Class>
void bind_common(Class& cls) {
  using T = typename Class::type;
  cls.def_property(
         "_axis", [](const T& c) { return axis_to_py(c.axis()); },
         [](T& c, const py::object& axis) { c.set_axis(axis_from_py(axis)); })
      .def("collect", &T::collect, py::arg("x"), py::call_guard<py::gil_scoped_release>(),
           "Folds one batch in.")
      .def("reset", &T::reset, "Forgets everything collected.")
      .def("_has_data", &T::has_data)
      .def("__deepcopy__", [](const T& c, py::dict) { return c.clone(); }, py::arg("memo"))
      .def("__copy__", [](const T& c) { return c.clone(); });
}

}  // namespace

void bind_calib(py::module_& m) {
  // The base class: what a quantizer holds. Python calibrators need not derive from it.
  py::class_<Calibrator, py::smart_holder>(m, "Calibrator")
      .def_property_readonly("axis", [](const Calibrator& c) { return axis_to_py(c.axis()); })
      .def_property_readonly("class_name", &Calibrator::class_name);

  py::class_<MaxCalibrator, Calibrator, py::smart_holder> max_cls(m, "MaxCalibrator",
      "Running elementwise max of |x| reduced over all dims but `axis` (memory: one amax "
      "tensor). track_amax also keeps each batch's amax in _amaxs.");
  max_cls
      .def(py::init([](const py::object& num_bits, const py::object& axis, bool is_unsigned,
                       bool track_amax) {
             const NumBits nb = num_bits_from_py(num_bits);
             return std::make_shared<MaxCalibrator>(nb.bits, axis_from_py(axis), is_unsigned,
                                                    track_amax);
           }),
           py::arg("num_bits") = 8, py::arg("axis") = py::none(), py::arg("unsigned") = false,
           py::arg("track_amax") = false)
      .def("compute_amax", [](const MaxCalibrator& c) { return c.compute_amax(); },
           "The running amax, or None when nothing was collected.")
      .def_property_readonly("_calib_amax", [](const MaxCalibrator& c) { return c.compute_amax(); })
      .def_property_readonly("_amaxs", &MaxCalibrator::amaxs)
      .def_property_readonly("_num_bits", &MaxCalibrator::num_bits)
      .def_property_readonly("_unsigned", &MaxCalibrator::is_unsigned)
      .def_property_readonly("_track_amax", &MaxCalibrator::track_amax)
      .def("__repr__", [](const MaxCalibrator& c) {
        return "MaxCalibrator(num_bits=" + std::to_string(c.num_bits()) +
               ", axis=" + py::repr(axis_to_py(c.axis())).cast<std::string>() + ")";
      });
  bind_common(max_cls);
  max_cls.def(py::pickle(
      [](const MaxCalibrator& c) {
        const auto amax = c.compute_amax();
        return py::make_tuple(c.num_bits(), axis_to_py(c.axis()), c.is_unsigned(), c.track_amax(),
                              amax ? py::cast(*amax) : py::none(), py::cast(c.amaxs()));
      },
      [](const py::tuple& t) {
        if (t.size() != 6) throw py::value_error("MaxCalibrator: bad pickled state");
        auto c = std::make_shared<MaxCalibrator>(t[0].cast<int64_t>(), axis_from_py(t[1]),
                                                 t[2].cast<bool>(), t[3].cast<bool>());
        c->load_state(t[4].is_none() ? at::Tensor() : t[4].cast<at::Tensor>(),
                      t[5].cast<std::vector<at::Tensor>>());
        return c;
      }));

  py::class_<StepAmaxCalibrator, Calibrator, py::smart_holder> step_cls(m, "StepAmaxCalibrator",
      "Per-step amax for a model a sampler calls once per step: call i folds into step i mod "
      "num_steps (by 'max' or 'mean'); compute_amax is a percentile (0-100) over the steps.");
  step_cls
      .def(py::init([](const py::object& num_bits, const py::object& axis, bool is_unsigned,
                       int64_t num_steps, double percentile, const std::string& collect) {
             const NumBits nb = num_bits_from_py(num_bits);
             return std::make_shared<StepAmaxCalibrator>(nb.bits, axis_from_py(axis),
                                                         is_unsigned, num_steps, percentile,
                                                         parse_step_collect(collect));
           }),
           py::arg("num_bits") = 8, py::arg("axis") = py::none(), py::arg("unsigned") = false,
           py::arg("num_steps") = 1, py::arg("percentile") = 50.0, py::arg("collect") = "max")
      .def("compute_amax", [](const StepAmaxCalibrator& c) { return c.compute_amax(); },
           "The percentile of the per-step amaxes, or None when nothing was collected.")
      .def_property_readonly("step_amaxes", &StepAmaxCalibrator::step_amaxes,
                             "Each step's combined amax (None for steps not reached).")
      .def_property_readonly("calls", &StepAmaxCalibrator::calls)
      .def_property_readonly("num_steps", &StepAmaxCalibrator::num_steps)
      .def_property_readonly("percentile", &StepAmaxCalibrator::percentile)
      .def("__repr__", [](const StepAmaxCalibrator& c) {
        return "StepAmaxCalibrator(num_bits=" + std::to_string(c.num_bits()) +
               ", axis=" + py::repr(axis_to_py(c.axis())).cast<std::string>() +
               ", num_steps=" + std::to_string(c.num_steps()) +
               ", percentile=" + std::to_string(c.percentile()) + ", collect='" +
               step_collect_name(c.collect_method()) + "')";
      });
  bind_common(step_cls);

  py::class_<HistogramCalibrator, Calibrator, py::smart_holder> hist_cls(m, "HistogramCalibrator",
      "Streams histograms of |x| (one per channel of `axis`) and turns them into amax by "
      "'entropy', 'percentile' or 'mse' (SPEC §5).");
  hist_cls
      .def(py::init([](const py::object& num_bits, const py::object& axis, bool is_unsigned,
                       const py::object& num_bins, const py::object& grow_method,
                       bool skip_zeros, bool torch_hist) {
             auto warnings = py::module_::import("warnings");
             if (!grow_method.is_none()) {
               warnings.attr("warn")("HistogramCalibrator: grow_method is deprecated and ignored",
                                     py::module_::import("builtins").attr("DeprecationWarning"), 2);
             }
             if (!torch_hist) {
               warnings.attr("warn")(
                   "HistogramCalibrator: torch_hist=False is ignored; mopt bins |x| over [0, max] "
                   "with its own kernels, as torch_hist=True does",
                   py::module_::import("builtins").attr("UserWarning"), 2);
             }
             if (py::isinstance<py::bool_>(num_bins) || !py::isinstance<py::int_>(num_bins)) {
               throw py::type_error("num_bins must be an int, got " +
                                    py::repr(num_bins).cast<std::string>());
             }
             return std::make_shared<HistogramCalibrator>(num_bits_from_py(num_bits),
                                                          axis_from_py(axis), is_unsigned,
                                                          num_bins.cast<int64_t>(), skip_zeros);
           }),
           py::arg("num_bits") = 8, py::arg("axis") = py::none(), py::arg("unsigned") = false,
           py::arg("num_bins") = 2048, py::arg("grow_method") = py::none(),
           py::arg("skip_zeros") = false, py::arg("torch_hist") = true)
      .def(
          "compute_amax",
          [](const HistogramCalibrator& c, const py::object& method, int64_t stride,
             int64_t start_bin, double percentile) {
            AmaxRequest r;
            if (!method.is_none()) {
              if (!py::isinstance<py::str>(method)) {
                throw py::type_error("Unknown calibration method " +
                                     py::repr(method).cast<std::string>() +
                                     "; expected 'entropy', 'percentile' or 'mse'");
              }
              r.method = parse_histogram_method(method.cast<std::string>());
            }
            r.options = HistogramAmaxOptions{stride, start_bin, percentile};
            py::gil_scoped_release no_gil;
            return c.compute_amax(r);
          },
          py::arg("method") = py::none(), py::kw_only(), py::arg("stride") = 1,
          py::arg("start_bin") = 128, py::arg("percentile") = 99.99,
          "amax by `method` ('entropy', 'percentile', 'mse'; None: the default method an "
          "algorithm set); None when nothing was collected.")
      .def(
          "set_default_method",
          [](HistogramCalibrator& c, const std::string& method, int64_t stride, int64_t start_bin,
             double percentile) {
            c.set_default_method(parse_histogram_method(method),
                                 HistogramAmaxOptions{stride, start_bin, percentile});
          },
          py::arg("method"), py::kw_only(), py::arg("stride") = 1, py::arg("start_bin") = 128,
          py::arg("percentile") = 99.99, "The method compute_amax() uses when given none.")
      .def("histogram", &HistogramCalibrator::histogram, py::arg("channel") = 0)
      .def("bin_edges", &HistogramCalibrator::bin_edges, py::arg("channel") = 0)
      .def_property_readonly("channels", &HistogramCalibrator::channels)
      .def_property_readonly("_calib_hist",
                             [](const HistogramCalibrator& c) -> py::object {
                               if (c.channels() == 0) return py::none();
                               if (!c.axis()) return py::cast(c.histogram(0));
                               py::list l;
                               for (int64_t i = 0; i < c.channels(); ++i) l.append(c.histogram(i));
                               return l;
                             })
      .def_property_readonly("_calib_bin_edges",
                             [](const HistogramCalibrator& c) -> py::object {
                               if (c.channels() == 0) return py::none();
                               if (!c.axis()) return py::cast(c.bin_edges(0));
                               py::list l;
                               for (int64_t i = 0; i < c.channels(); ++i) l.append(c.bin_edges(i));
                               return l;
                             })
      .def_property_readonly("_num_bits",
                             [](const HistogramCalibrator& c) { return num_bits_to_py(c.num_bits()); })
      .def_property_readonly("_unsigned", &HistogramCalibrator::is_unsigned)
      .def_property_readonly("_num_bins", &HistogramCalibrator::num_bins)
      .def_property_readonly("_skip_zeros", &HistogramCalibrator::skip_zeros)
      .def("__str__",
           [](const HistogramCalibrator& c) {
             std::string s = "None";
             if (c.channels() > 0 && !c.axis()) {
               const at::Tensor e = c.bin_edges(0);
               if (e.defined()) {
                 char buf[96];
                 std::snprintf(buf, sizeof(buf), "[%.3f, ..., %.3f](%lld)", e[0].item<float>(),
                               e[-1].item<float>(), static_cast<long long>(e.numel()));
                 s = buf;
               }
             } else if (c.channels() > 0) {
               s = std::to_string(c.channels()) + " channels";
             }
             return "HistogramCalibrator(calib_bin_edges=" + s + ")";
           })
      .def("__repr__", [](const HistogramCalibrator& c) {
        return "HistogramCalibrator(num_bits=" +
               py::repr(num_bits_to_py(c.num_bits())).cast<std::string>() +
               ", axis=" + py::repr(axis_to_py(c.axis())).cast<std::string>() +
               ", unsigned=" + (c.is_unsigned() ? "True" : "False") +
               ", num_bins=" + std::to_string(c.num_bins()) +
               ", skip_zeros=" + (c.skip_zeros() ? "True" : "False") + ")";
      });
  bind_common(hist_cls);
  hist_cls.def(py::pickle(
      [](const HistogramCalibrator& c) {
        if (c.has_data()) {
          throw py::type_error(
              "cannot pickle a HistogramCalibrator holding collected histograms (copy.deepcopy "
              "works); finish calibration first and call quantizer.reset_calibrator() (the amax "
              "stays) to save the model whole");
        }
        return py::make_tuple(num_bits_to_py(c.num_bits()), axis_to_py(c.axis()), c.is_unsigned(),
                              c.num_bins(), c.skip_zeros());
      },
      [](const py::tuple& t) {
        if (t.size() != 5) throw py::value_error("HistogramCalibrator: bad pickled state");
        return std::make_shared<HistogramCalibrator>(num_bits_from_py(t[0]), axis_from_py(t[1]),
                                                     t[2].cast<bool>(), t[3].cast<int64_t>(),
                                                     t[4].cast<bool>());
      }));

  py::class_<MseCalibrator, Calibrator, py::smart_holder> mse_cls(m, "MseCalibrator",
      "Per-tensor or per-channel search of amax * m for m in linspace(start_multiplier, "
      "stop_multiplier, num_steps) by accumulated error of quant_func (SPEC §5 `mse`).");
  mse_cls
      // ModelOpt's signature: the grid is given by step_size (num_steps =
      // ceil((stop - start) / step_size) + 1); num_steps, keyword only, gives it directly.
      .def(py::init([](const py::object& amax, const py::object& axis, double step_size,
                       double start_multiplier, double stop_multiplier,
                       const py::object& quant_func, const py::object& error_func,
                       py::object num_steps) {
             if (amax.is_none()) {
               throw py::value_error("MseCalibrator needs an initial amax (run max calibration "
                                     "first)");
             }
             if (num_steps.is_none()) {
               if (!(step_size > 0.0) || !std::isfinite(step_size)) {
                 throw py::value_error("step_size must be a positive number, got " +
                                       std::to_string(step_size));
               }
               const double n = std::ceil((stop_multiplier - start_multiplier) / step_size) + 1.0;
               if (!(n <= 1e6)) {
                 throw py::value_error("step_size " + std::to_string(step_size) +
                                       " gives more than 10^6 multipliers to search");
               }
               num_steps = py::int_(static_cast<int64_t>(std::max(n, 1.0)));
             }
             if (py::isinstance<py::bool_>(num_steps) || !py::isinstance<py::int_>(num_steps)) {
               throw py::type_error("num_steps must be an int, got " +
                                    py::repr(num_steps).cast<std::string>());
             }
             for (const auto& [name, fn] : {std::pair{"quant_func", quant_func},
                                            std::pair{"error_func", error_func}}) {
               if (!fn.is_none() && !PyCallable_Check(fn.ptr())) {
                 throw py::type_error(std::string(name) + " must be callable, got " +
                                      py::type::of(fn).attr("__name__").cast<std::string>());
               }
             }
             auto to_tensor = py::module_::import("torch").attr("as_tensor");
             return std::make_shared<MseCalibrator>(
                 to_tensor(amax).cast<at::Tensor>(), axis_from_py(axis),
                 num_steps.cast<int64_t>(), start_multiplier, stop_multiplier,
                 quant_func.is_none() ? nullptr : quant_func.cast<MseCalibrator::QuantFunc>(),
                 error_func.is_none() ? nullptr : error_func.cast<MseCalibrator::ErrorFunc>());
           }),
           py::arg("amax"), py::arg("axis") = py::none(), py::arg("step_size") = 0.1,
           py::arg("start_multiplier") = 0.25, py::arg("stop_multiplier") = 4.0,
           py::arg("quant_func") = py::none(), py::arg("error_func") = py::none(), py::kw_only(),
           py::arg("num_steps") = py::none())
      .def(
          "compute_amax",
          [](const MseCalibrator& c, bool verbose) -> c10::optional<at::Tensor> {
            c10::optional<at::Tensor> amax = c.compute_amax();
            if (verbose && amax.has_value()) {
              const at::Tensor ratio = *amax / c.initial_amax().to(amax->device());
              char buf[160];
              if (ratio.numel() == 1) {
                std::snprintf(buf, sizeof(buf),
                              "MSE Calibrator: best_amax/initial_amax ratio = %.4f",
                              ratio.item<double>());
              } else {
                std::snprintf(buf, sizeof(buf),
                              "MSE Calibrator: best_amax/initial_amax ratio - mean: %.4f, min: "
                              "%.4f, max: %.4f",
                              ratio.mean().item<double>(), ratio.min().item<double>(),
                              ratio.max().item<double>());
              }
              py::print(buf);
            }
            return amax;
          },
          py::arg("verbose") = false,
          "Initial amax times the best multiplier per channel; None before any collect.")
      .def_property_readonly("_initial_amax", &MseCalibrator::initial_amax)
      .def_property_readonly("_num_steps", &MseCalibrator::num_steps)
      .def_property_readonly("_candidates",
                             [](const MseCalibrator& c) -> std::optional<at::Tensor> {
                               if (!c.candidates().defined()) return std::nullopt;
                               return c.candidates();
                             })
      .def_property_readonly("_losses_sum",
                             [](const MseCalibrator& c) -> py::object {
                               if (!c.has_data()) return py::none();
                               return py::cast(c.losses());
                             })
      .def("__repr__", [](const MseCalibrator& c) {
        return "MseCalibrator(axis=" + py::repr(axis_to_py(c.axis())).cast<std::string>() +
               ", num_steps=" + std::to_string(c.num_steps()) + ")";
      });
  bind_common(mse_cls);

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
