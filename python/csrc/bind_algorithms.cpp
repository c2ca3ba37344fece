// include/mopt/algorithms: the per-layer solvers (SmoothQuant, AWQ lite, AWQ clip, GPTQ) that the
// layer-wise driver of mopt.quantization.algorithms feeds from forward hooks.
#include "bindings.h"
#include <pybind11/stl.h>

#include "mopt/algorithms/awq.h"
#include "mopt/algorithms/calibration.h"
#include "mopt/algorithms/gptq.h"
#include "mopt/algorithms/smoothquant.h"
#include "mopt/core/error.h"
#include "mopt/quant/quantizer_core.h"

namespace py = pybind11;

namespace mopt::python {
namespace {

// A quantizer config from Python: a QuantizerCore (a quantizer's `core`) or its JSON.
QuantizerAttributeConfig config_from_py(const py::object& obj) {
  if (py::isinstance<QuantizerCore>(obj)) return obj.cast<const QuantizerCore&>().attributes();
  if (py::isinstance<py::str>(obj)) return parse_quantizer_config_cached(obj.cast<std::string>());
  throw py::type_error("expected a quantizer core or its config JSON, got " +
                       py::type::of(obj).attr("__name__").cast<std::string>());
}

const QuantizerCore* core_or_null(const py::object& obj) {
  return obj.is_none() ? nullptr : &obj.cast<const QuantizerCore&>();
}

py::dict update_dict(const algorithms::LayerUpdate& u) {
  py::dict d;
  d["weight"] = u.weight ? py::cast(*u.weight) : py::none();
  d["pre_quant_scale"] = u.pre_quant_scale ? py::cast(*u.pre_quant_scale) : py::none();
  d["input_amax"] = u.input_amax ? py::cast(*u.input_amax) : py::none();
  d["weight_amax"] = u.weight_amax ? py::cast(*u.weight_amax) : py::none();
  d["weight_zero_point"] = u.weight_zero_point ? py::cast(*u.weight_zero_point) : py::none();
  d["recalibrate_weight"] = u.recalibrate_weight;
  return d;
}

void bind_layer_solver(py::module_& m) {
  using algorithms::LayerSolver;
  py::enum_<algorithms::SolverInput>(m, "SolverInput")
      .value("FLOAT", algorithms::SolverInput::kFloat)
      .value("RUNNING_AMAX", algorithms::SolverInput::kRunningAmax)
      .value("QUANTIZED", algorithms::SolverInput::kQuantized);
  py::class_<LayerSolver, py::smart_holder>(m, "LayerSolver",
                                            "One linear layer's calibration solver: collect() "
                                            "its inputs per pass, finish_pass(), solve().")
      .def_property_readonly("name", &LayerSolver::name)
      .def_property_readonly("num_passes", &LayerSolver::num_passes)
      .def_property_readonly("input_mode", &LayerSolver::input_mode)
      .def("collect_pass",
           no_gil_with_warnings(
               [](LayerSolver& s, int pass, const at::Tensor& x) { s.collect(pass, x); }),
           py::arg("pass_index"), py::arg("x"))
      .def("finish_pass",
           no_gil_with_warnings([](LayerSolver& s, int pass) { s.finish_pass(pass); }),
           py::arg("pass_index"))
      .def("pass_batches", &LayerSolver::num_batches, py::arg("pass_index"),
           "Batches (GPTQ: tokens) pass `pass_index` saw, over every rank after finish_pass.")
      .def(
          "solve",
          with_warnings([](LayerSolver& s, std::optional<at::Tensor> pqs,
                                         std::optional<at::Tensor> weight_amax) {
            algorithms::LayerState state{pqs, weight_amax};
            algorithms::LayerUpdate u;
            {
              py::gil_scoped_release no_gil;
              u = s.solve(state);
            }
            return update_dict(u);
          }),
          py::arg("input_pre_quant_scale") = py::none(), py::arg("weight_amax") = py::none(),
          "The update (dict: weight, pre_quant_scale, input_amax, weight_amax, "
          "recalibrate_weight) from the layer's current quantizer state.");
}

}  // namespace

void bind_algorithms(py::module_& m) {
  bind_layer_solver(m);
  using algorithms::AwqClipLayer;
  using algorithms::AwqClipOptions;
  using algorithms::AwqClipResult;
  using algorithms::AwqLiteLayer;
  using algorithms::AwqLiteResult;
  using algorithms::SmoothedLinear;
  using algorithms::SmoothQuantLayer;
  using release_gil = py::call_guard<py::gil_scoped_release>;

  m.def("smoothquant_scale", &algorithms::smoothquant_scale, py::arg("act_amax"),
        py::arg("weight_max"), py::arg("alpha") = 1.0,
        "SmoothQuant per-channel scales clamp(w^(1-a) / act^a, 1e-4, 1e4) (1 for dead channels).");
  m.def("fold_pre_quant_scale", &algorithms::fold_pre_quant_scale, py::arg("weight"),
        py::arg("pre_quant_scale"), py::arg("act_amax"),
        py::arg("prior_pre_quant_scale") = py::none(),
        "Folds a per-input-channel pre_quant_scale into a linear weight.");
  m.def("awq_alpha_grid", &algorithms::awq_alpha_grid, py::arg("alpha_step") = 0.1,
        "Alphas searched by awq_lite.");
  m.def("awq_clip_ratios", &algorithms::awq_clip_ratios, py::arg("min_clip_ratio") = 0.5,
        py::arg("shrink_step") = 0.05, "Clip ratios searched by awq_clip.");
  m.def(
      "awq_block_size",
      [](const py::object& cfg, int64_t in_features) {
        return algorithms::awq_block_size(config_from_py(cfg), in_features);
      },
      py::arg("weight_cfg"), py::arg("in_features"),
      "Input-axis block length of a weight quantizer config.");
  m.def("smoothquant_skip_reason",
        [](const std::string& name, const py::object& input_q, const py::object& weight_q) {
          return algorithms::smoothquant_skip_reason(name, core_or_null(input_q),
                                                     core_or_null(weight_q));
        },
        py::arg("name"), py::arg("input_quantizer"), py::arg("weight_quantizer"),
        "The warning for a layer SmoothQuant leaves alone (None: it can smooth it; a None "
        "quantizer stands for a SequentialQuantizer).");
  m.def("tied_weight_skip_reasons", &algorithms::tied_weight_skip_reasons, py::arg("algorithm"),
        py::arg("names"), py::arg("weights"),
        "For each layer, the warning when its weight is shared with another layer's (tied), "
        "which an algorithm changing weights must leave alone; None for the others.");
  m.def("awq_lite_skip_reason", &algorithms::awq_lite_skip_reason, py::arg("name"),
        py::arg("input_quantizer"), "The warning for a layer AWQ lite does not search, or None.");
  m.def("awq_clip_skip_reason", &algorithms::awq_clip_skip_reason, py::arg("name"),
        py::arg("weight_quantizer"), "The warning for a layer AWQ clip does not clip, or None.");
  m.def("gptq_check_layer",
        [](const std::string& name, const py::object& weight_q, bool has_pqs) {
          algorithms::gptq_check_layer(name, core_or_null(weight_q), has_pqs);
        },
        py::arg("name"), py::arg("weight_quantizer"), py::arg("weight_has_pre_quant_scale"),
        "NotImplementedError for a layer GPTQ cannot run on.");
  m.def(
      "max_calibration_from_weights",
      [](const std::vector<const QuantizerCore*>& cores, const std::vector<bool>& reads_weight) {
        MOPT_CHECK_VALUE(cores.size() == reads_weight.size(), "max_calibration_from_weights: ",
                         cores.size(), " quantizer cores but ", reads_weight.size(), " flags");
        std::vector<algorithms::MaxCalibrationQuantizer> quantizers;
        for (size_t i = 0; i < cores.size(); ++i) quantizers.push_back({cores[i], reads_weight[i]});
        return algorithms::max_calibration_from_weights(quantizers);
      },
      py::arg("cores"), py::arg("reads_layer_weight"),
      "True when max calibration needs no forward_loop: every quantizer core that needs "
      "calibration reads its layer's weight (the flag at its index) with a plain max calibrator.");
  m.def(
      "lsq_targets",
      [](const std::vector<std::string>& names, const std::vector<const QuantizerCore*>& cores) {
        MOPT_CHECK_VALUE(names.size() == cores.size(), "lsq_targets: ", names.size(),
                         " names but ", cores.size(), " quantizer cores");
        std::vector<algorithms::LsqCandidate> candidates;
        for (size_t i = 0; i < names.size(); ++i) candidates.push_back({names[i], cores[i]});
        return algorithms::lsq_targets(candidates);
      },
      py::arg("names"), py::arg("cores"),
      "Indices of the weight quantizers (names and cores) whose amax lsq learns; "
      "NotImplementedError for a static NVFP4/MX/NF4 block quantizer, ValueError for none.");
  m.attr("MAX_CALIBRATION_FROM_WEIGHTS_NOTE") = algorithms::max_calibration_from_weights_note();
  m.def(
      "parse_algorithm",
      [](const std::string& json, const std::vector<std::string>& external) {
        py::list steps;
        auto loads = py::module_::import("json").attr("loads");
        for (const auto& step : algorithms::parse_calibration_steps(json, external)) {
          steps.append(py::make_tuple(step.method, loads(step.options_json())));
        }
        return steps;
      },
      py::arg("algorithm_json"), py::arg("external_methods") = std::vector<std::string>{},
      "[(method, options)] of a quantize config's algorithm, every option checked and filled "
      "in (methods in external_methods keep their options unchecked).");
  m.def("calibration_methods", &algorithms::calibration_methods,
        "The calibration methods implemented in C++.");
  m.def("awq_weight_scale", &algorithms::awq_weight_scale, py::arg("weight"), py::arg("block_size"),
        "AWQ weight salience: mean over rows of |W| / block max |W|.");
  m.def("awq_scale", &algorithms::awq_scale, py::arg("act_scale"), py::arg("weight_scale"),
        py::arg("alpha"), "AWQ scales for one alpha.");

  py::class_<SmoothedLinear>(m, "SmoothedLinear")
      .def_readonly("pre_quant_scale", &SmoothedLinear::pre_quant_scale)
      .def_readonly("weight", &SmoothedLinear::weight)
      .def_readonly("input_amax", &SmoothedLinear::input_amax);

  py::class_<SmoothQuantLayer, algorithms::LayerSolver, py::smart_holder>(m, "SmoothQuantLayer")
      .def(py::init<at::Tensor, double, std::string>(), py::arg("weight"), py::arg("alpha") = 1.0,
           py::arg("name") = "")
      .def(py::init([](at::Tensor weight, const py::object& input_cfg, const py::object& weight_cfg,
                       double alpha_step, int64_t max_tokens_per_batch, std::string name) {
             algorithms::SmoothQuantSearchOptions options;
             options.alpha_step = alpha_step;
             options.max_tokens_per_batch = max_tokens_per_batch;
             return std::make_shared<SmoothQuantLayer>(std::move(weight),
                                                       config_from_py(input_cfg),
                                                       config_from_py(weight_cfg), options,
                                                       std::move(name));
           }),
           py::arg("weight"), py::arg("input_cfg"), py::arg("weight_cfg"),
           py::arg("alpha_step") = 0.1, py::arg("max_tokens_per_batch") = 64,
           py::arg("name") = "",
           "SmoothQuant with a per-layer alpha search on the quantizers' configs.")
      .def("collect", py::overload_cast<const at::Tensor&>(&SmoothQuantLayer::collect),
           py::arg("x"), release_gil())
      .def("search", &SmoothQuantLayer::search, py::arg("x"), release_gil())
      .def("scale", &SmoothQuantLayer::scale, release_gil())
      .def("weight_max", &SmoothQuantLayer::weight_max, release_gil())
      .def("compute", &SmoothQuantLayer::compute, py::arg("prior_pre_quant_scale") = py::none(),
           release_gil())
      .def_property_readonly("act_amax", &SmoothQuantLayer::act_amax)
      .def_property_readonly("num_batches", [](const SmoothQuantLayer& s) { return s.num_batches(0); })
      .def_property_readonly("alpha", &SmoothQuantLayer::alpha)
      .def_property_readonly("searches", &SmoothQuantLayer::searches)
      .def_property_readonly("alphas", &SmoothQuantLayer::alphas)
      .def_property_readonly("losses", &SmoothQuantLayer::losses)
      .def_property_readonly("num_search_steps", &SmoothQuantLayer::num_search_steps)
      .def_property_readonly("num_search_tokens", &SmoothQuantLayer::num_search_tokens)
      .def_property_readonly("name", &SmoothQuantLayer::name);

  py::class_<AwqLiteResult>(m, "AwqLiteResult")
      .def_readonly("alpha", &AwqLiteResult::alpha)
      .def_readonly("scale", &AwqLiteResult::scale)
      .def_readonly("folded", &AwqLiteResult::folded);

  py::class_<AwqLiteLayer, algorithms::LayerSolver, py::smart_holder>(m, "AwqLiteLayer")
      .def(py::init([](at::Tensor weight, const py::object& cfg, double alpha_step,
                       std::string name) {
             return std::make_shared<AwqLiteLayer>(std::move(weight), config_from_py(cfg),
                                                   alpha_step, std::move(name));
           }),
           py::arg("weight"), py::arg("weight_cfg"), py::arg("alpha_step") = 0.1,
           py::arg("name") = "")
      .def("collect", py::overload_cast<const at::Tensor&>(&AwqLiteLayer::collect), py::arg("x"),
           release_gil())
      .def("finish_collect", &AwqLiteLayer::finish_collect, release_gil())
      .def("search", &AwqLiteLayer::search, py::arg("x"), release_gil())
      .def("compute", &AwqLiteLayer::compute, py::arg("prior_pre_quant_scale") = py::none(),
           release_gil())
      .def_property_readonly("alphas", &AwqLiteLayer::alphas)
      .def_property_readonly("losses", &AwqLiteLayer::losses)
      .def_property_readonly("act_scale", &AwqLiteLayer::act_scale)
      .def_property_readonly("act_amax", &AwqLiteLayer::act_amax)
      .def_property_readonly("weight_scale", &AwqLiteLayer::weight_scale)
      .def_property_readonly("block_size", &AwqLiteLayer::block_size)
      .def_property_readonly("num_collect_steps", &AwqLiteLayer::num_collect_steps)
      .def_property_readonly("num_search_steps", &AwqLiteLayer::num_search_steps)
      .def_property_readonly("num_tokens", &AwqLiteLayer::num_tokens)
      .def_property_readonly("name", &AwqLiteLayer::name);

  py::class_<AwqClipResult>(m, "AwqClipResult")
      .def_readonly("amax", &AwqClipResult::amax)
      .def_property_readonly("zero_point",
                             [](const AwqClipResult& r) -> std::optional<at::Tensor> {
                               if (!r.zero_point.defined()) return std::nullopt;
                               return r.zero_point;
                             })
      .def_readonly("ratio", &AwqClipResult::ratio)
      .def_readonly("losses", &AwqClipResult::losses);

  py::class_<AwqClipLayer, algorithms::LayerSolver, py::smart_holder>(m, "AwqClipLayer")
      .def(py::init([](at::Tensor weight, at::Tensor weight_amax, const py::object& cfg,
                       int64_t max_co_batch_size, int64_t max_tokens_per_batch,
                       double min_clip_ratio, double shrink_step, std::string name) {
             AwqClipOptions options;
             options.max_co_batch_size = max_co_batch_size;
             options.max_tokens_per_batch = max_tokens_per_batch;
             options.min_clip_ratio = min_clip_ratio;
             options.shrink_step = shrink_step;
             return std::make_shared<AwqClipLayer>(std::move(weight), std::move(weight_amax),
                                                   config_from_py(cfg), options, std::move(name));
           }),
           py::arg("weight"), py::arg("weight_amax"), py::arg("weight_cfg"),
           py::arg("max_co_batch_size") = 1024, py::arg("max_tokens_per_batch") = 64,
           py::arg("min_clip_ratio") = 0.5, py::arg("shrink_step") = 0.05, py::arg("name") = "")
      .def("collect", py::overload_cast<const at::Tensor&>(&AwqClipLayer::collect), py::arg("x"),
           release_gil())
      .def("compute", py::overload_cast<>(&AwqClipLayer::compute, py::const_), release_gil())
      .def_property_readonly("ratios", &AwqClipLayer::ratios)
      .def_property_readonly("per_tensor", &AwqClipLayer::per_tensor)
      .def_property_readonly("block_size", &AwqClipLayer::block_size)
      .def_property_readonly("num_batches", [](const AwqClipLayer& s) { return s.num_batches(0); })
      .def_property_readonly("num_tokens", &AwqClipLayer::num_tokens)
      .def_property_readonly("name", &AwqClipLayer::name);

  {
  using algorithms::GptqHessian;
  using algorithms::GptqResult;

  py::class_<GptqHessian>(m, "GptqHessian",
                          "Streams H = 2/n sum x x^T of one linear layer's inputs (fp32).")
      .def(py::init<int64_t, std::string>(), py::arg("in_features"), py::arg("name") = "")
      .def("add_batch", &GptqHessian::add_batch, py::arg("x"),
           "Adds the tokens of x [..., in_features].")
      .def("hessian", &GptqHessian::hessian, "H = 2/n X^T X as [in, in] fp32.")
      .def("reset", &GptqHessian::reset)
      .def_property_readonly("num_samples", &GptqHessian::num_samples)
      .def_property_readonly("in_features", &GptqHessian::in_features)
      .def_property_readonly("name", &GptqHessian::name);

  py::class_<GptqResult>(m, "GptqResult", "Quantized weight, quantizer amax and diagnostics.")
      .def_readonly("weight", &GptqResult::weight)
      .def_readonly("amax", &GptqResult::amax)
      .def_property_readonly("zero_point",
                             [](const GptqResult& r) -> std::optional<at::Tensor> {
                               if (!r.zero_point.defined()) return std::nullopt;
                               return r.zero_point;
                             })
      .def_readonly("loss", &GptqResult::loss)
      .def_readonly("percdamp", &GptqResult::percdamp)
      .def_readonly("dead_columns", &GptqResult::dead_columns);

  m.def(
      "gptq_quantize_weight",
      [](const at::Tensor& weight, const at::Tensor& hessian, const py::object& cfg,
         int64_t block_size, double percdamp, bool act_order,
         const c10::optional<at::Tensor>& tensor_amax, const std::string& name) {
        algorithms::GptqOptions opt;
        opt.block_size = block_size;
        opt.percdamp = percdamp;
        opt.act_order = act_order;
        const QuantizerAttributeConfig c = config_from_py(cfg);
        py::gil_scoped_release no_gil;
        return algorithms::gptq_quantize_weight(weight, hessian, c, opt, tensor_amax, name);
      },
      py::arg("weight"), py::arg("hessian"), py::arg("cfg"), py::arg("block_size") = 128,
      py::arg("percdamp") = 0.01, py::arg("act_order") = false, py::arg("tensor_amax") = py::none(),
      py::arg("name") = "",
      "GPTQ of weight [out, in] with Hessian [in, in] for a weight quantizer config (a quantizer "
      "core or its JSON).");

  m.def(
      "gptq_check_weight_config",
      [](const py::object& cfg, int64_t out_features, int64_t in_features,
         const std::string& name) {
        algorithms::gptq_check_weight_config(config_from_py(cfg), out_features, in_features, name);
      },
      py::arg("cfg"), py::arg("out_features"), py::arg("in_features"), py::arg("name") = "",
      "Raises the error gptq_quantize_weight would raise for this weight quantizer config.");

  py::class_<algorithms::GptqLayer, algorithms::LayerSolver, py::smart_holder>(m, "GptqLayer")
      .def(py::init([](at::Tensor weight, const py::object& cfg, int64_t block_size,
                       double percdamp, bool act_order, std::string name) {
             algorithms::GptqOptions opt;
             opt.block_size = block_size;
             opt.percdamp = percdamp;
             opt.act_order = act_order;
             return std::make_shared<algorithms::GptqLayer>(std::move(weight), config_from_py(cfg),
                                                            opt, std::move(name));
           }),
           py::arg("weight"), py::arg("weight_cfg"), py::arg("block_size") = 128,
           py::arg("percdamp") = 0.01, py::arg("act_order") = false, py::arg("name") = "")
      .def_property_readonly("num_samples",
                             [](const algorithms::GptqLayer& g) { return g.hessian().num_samples(); })
      .def_property_readonly("result", &algorithms::GptqLayer::result);

  m.def(
      "gptq_hessian_inverse",
      [](const at::Tensor& hessian, double percdamp, bool act_order, int64_t block_size,
         const std::string& precision, const std::string& name) {
        algorithms::HessianFactorPrecision p = algorithms::HessianFactorPrecision::kAuto;
        if (precision == "fp32") {
          p = algorithms::HessianFactorPrecision::kFloat32;
        } else if (precision == "fp64") {
          p = algorithms::HessianFactorPrecision::kFloat64;
        } else {
          MOPT_CHECK_VALUE(precision == "auto", "gptq_hessian_inverse: precision must be "
                           "'auto', 'fp32' or 'fp64', got '", precision, "'");
        }
        const auto r =
            algorithms::gptq_hessian_inverse(hessian, percdamp, act_order, block_size, name,
                                             "GPTQ", p);
        return py::make_tuple(r.factor, r.perm, r.percdamp, r.dead_columns,
                              r.fp32_factorization);
      },
      py::arg("hessian"), py::arg("percdamp") = 0.01, py::arg("act_order") = false,
      py::arg("block_size") = 128, py::arg("precision") = "auto", py::arg("name") = "",
      "(factor, perm, percdamp_used, dead_columns, fp32_factorization): per column block c, U_cc "
      "on the diagonal and R[:c0, c] U_cc above (U^T U = (H[perm][:, perm] + damp I)^-1, "
      "R = U^-1); see mopt/algorithms/gptq.h.");
  m.def("hessian_condition_bound", &algorithms::hessian_condition_bound, py::arg("damped"),
        py::arg("damp"),
        "Upper bound on cond(H + damp I) from H + damp I (symmetric PSD H) and damp.");
  }
}

}  // namespace mopt::python
