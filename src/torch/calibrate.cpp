// The C++ front end's calibration driver: what runs when for every calibration method on a
// LibTorch module tree. The statistics and the math are the shared C++ calibrators and layer
// solvers; this file mirrors, step for step, the Python driver in mopt.quantization.algorithms,
// so both front ends give the same weights and amax on the same module and data.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/all.h>
#include <ATen/ops/any.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/lt.h>
#include <c10/util/Exception.h>

#include <iostream>
#include <unordered_map>
#include <unordered_set>

#include "mopt/algorithms/awq.h"
#include "mopt/algorithms/calibration.h"
#include "mopt/algorithms/gptq.h"
#include "mopt/algorithms/layer_solver.h"
#include "mopt/algorithms/smoothquant.h"
#include "mopt/calib/histogram_calibrator.h"
#include "mopt/calib/step_calibrator.h"
#include "mopt/core/error.h"
#include "mopt/torch/quantize.h"
#include "torch/module_tree.h"

namespace mopt {
namespace {

using algorithms::LayerSolver;
using algorithms::LayerState;
using algorithms::LayerUpdate;
using algorithms::SolverInput;
using ModulePtr = std::shared_ptr<torch::nn::Module>;

// ---------------------------------------------------------------------------------------------
// Quantizers and layers

TensorQuantizerImpl* tensor_quantizer(const QuantModule& m, QuantModule::Slot slot) {
  return dynamic_cast<TensorQuantizerImpl*>(m.quantizer(slot).get());
}

// The quantizers of a slot in order (one, or the stages of a SequentialQuantizer).
std::vector<TensorQuantizer> slot_quantizers(const QuantModule& m, QuantModule::Slot slot) {
  const ModulePtr q = m.quantizer(slot);
  if (auto* s = dynamic_cast<SequentialQuantizerImpl*>(q.get())) return s->quantizers();
  if (auto t = std::dynamic_pointer_cast<TensorQuantizerImpl>(q)) return {TensorQuantizer(t)};
  return {};
}

// A converted linear layer (Python: quantized_linears).
struct Linear {
  std::string name;
  QuantLinearImpl* module;
};

std::vector<Linear> quantized_linears(torch::nn::Module& model) {
  std::vector<Linear> out;
  for (const Node& node : named_modules(model)) {
    auto* l = dynamic_cast<QuantLinearImpl*>(node.module);
    if (l && l->is_converted()) out.push_back({node.name, l});
  }
  return out;
}

// quantized_linears minus the layers whose weight is shared with another (tied weights), which
// an algorithm that scales or updates weights must leave alone (Python: solvable_linears).
std::vector<Linear> solvable_linears(torch::nn::Module& model, const std::string& algorithm) {
  const std::vector<Linear> all = quantized_linears(model);
  std::vector<std::string> names;
  std::vector<at::Tensor> weights;
  for (const Linear& l : all) {
    names.push_back(l.name);
    weights.push_back(l.module->weight);
  }
  const auto reasons = algorithms::tied_weight_skip_reasons(algorithm, names, weights);
  std::vector<Linear> out;
  for (size_t i = 0; i < all.size(); ++i) {
    if (reasons[i]) {
      MOPT_WARN(*reasons[i]);
      continue;
    }
    out.push_back(all[i]);
  }
  return out;
}

// Every quantizer of the model, in named_modules order.
std::vector<TensorQuantizerImpl*> all_quantizers(torch::nn::Module& model) {
  std::vector<TensorQuantizerImpl*> out;
  for (const Node& node : named_modules(model)) {
    if (auto* t = dynamic_cast<TensorQuantizerImpl*>(node.module)) out.push_back(t);
  }
  return out;
}

bool needs_calibration(const TensorQuantizerImpl& q) { return q.core().needs_calibration(); }

void warn(const std::string& message) { MOPT_WARN(message); }

// ---------------------------------------------------------------------------------------------
// Max calibration (the building block of every method)

void enable_stats_collection(torch::nn::Module& model) {
  for (auto* q : all_quantizers(model)) {
    if (!needs_calibration(*q)) continue;
    q->disable_quant();
    q->enable_calib();
  }
}

void finish_stats_collection(torch::nn::Module& model) {
  for (auto* q : all_quantizers(model)) {
    if (!q->is_calib_enabled()) continue;
    if (q->calibrator()) q->load_calib_amax();
    q->disable_calib();
    q->enable_quant();
  }
}

// The forward loop failed part-way: a partial statistic must not become an amax.
void abort_stats_collection(torch::nn::Module& model) {
  for (auto* q : all_quantizers(model)) {
    if (!q->is_calib_enabled()) continue;
    q->core().reset_calibrator();
    q->disable_calib();
    q->enable_quant();
  }
}

void weight_only_calibrate(torch::nn::Module& model, bool only_uncalibrated) {
  for (const Node& node : named_modules(model)) {
    auto* qm = dynamic_cast<QuantModule*>(node.module);
    if (!qm || !qm->is_converted()) continue;
    const at::Tensor weight = qm->quant_weight();
    std::vector<TensorQuantizer> quantizers = slot_quantizers(*qm, QuantModule::kWeight);
    if (quantizers.empty() || !weight.defined()) continue;
    std::vector<bool> pending(quantizers.size());
    bool any = false;
    for (size_t i = 0; i < quantizers.size(); ++i) {
      pending[i] = needs_calibration(*quantizers[i]) &&
                   (!only_uncalibrated || !quantizers[i]->amax().has_value());
      any = any || pending[i];
    }
    if (!any) continue;
    if (only_uncalibrated) {
      warn("mopt: layer '" + node.name + "' (" + qm->quant_class_name() +
           ") was not reached by the forward loop; its weight quantizer is calibrated from the "
           "weight alone");
    }
    at::NoGradGuard no_grad;
    at::Tensor x = weight;
    for (size_t i = 0; i < quantizers.size(); ++i) {
      if (pending[i]) {
        quantizers[i]->reset_amax();
        quantizers[i]->collect(x);
        quantizers[i]->load_calib_amax();
      }
      x = quantizers[i]->forward(x);
    }
  }
}

void run_loop(torch::nn::Module& model, const ForwardLoop& loop) {
  at::NoGradGuard no_grad;
  loop(model);
}

// Runs the loop with every static quantizer collecting; loads their amax afterwards.
void collect_and_load(torch::nn::Module& model, const ForwardLoop& loop) {
  enable_stats_collection(model);
  try {
    run_loop(model, loop);
  } catch (...) {
    abort_stats_collection(model);
    throw;
  }
  finish_stats_collection(model);
}

// Every quantizer of the weight slot of a converted layer with a materialized, non-empty weight:
// the layer's forward passes quant_weight() to them as it is.
std::unordered_set<const TensorQuantizerImpl*> layer_weight_quantizers(torch::nn::Module& model) {
  std::unordered_set<const TensorQuantizerImpl*> out;
  for (const Node& node : named_modules(model)) {
    auto* qm = dynamic_cast<QuantModule*>(node.module);
    if (!qm || !qm->is_converted()) continue;
    const at::Tensor weight = qm->quant_weight();
    if (!weight.defined() || weight.is_meta() || weight.numel() == 0) continue;
    for (const TensorQuantizer& q : slot_quantizers(*qm, QuantModule::kWeight)) out.insert(q.get());
  }
  return out;
}

bool calibrates_from_weights(torch::nn::Module& model) {
  const auto readable = layer_weight_quantizers(model);
  std::vector<algorithms::MaxCalibrationQuantizer> quantizers;
  for (auto* q : all_quantizers(model)) quantizers.push_back({&q->core(), readable.count(q) > 0});
  return algorithms::max_calibration_from_weights(quantizers);
}

// Max calibration as one forward pass would do it, without the data: every quantizer that needs
// calibration (only weight quantizers, see calibrates_from_weights) collects with quantization
// off while each layer's weight goes through its weight quantizer, stages in order.
void calibrate_from_weights(torch::nn::Module& model) {
  enable_stats_collection(model);
  try {
    at::NoGradGuard no_grad;
    for (const Node& node : named_modules(model)) {
      auto* qm = dynamic_cast<QuantModule*>(node.module);
      if (!qm || !qm->is_converted()) continue;
      bool collecting = false;
      for (const auto& q : slot_quantizers(*qm, QuantModule::kWeight)) {
        collecting = collecting || q->is_calib_enabled();
      }
      if (!collecting) continue;
      const ModulePtr wq = qm->quantizer(QuantModule::kWeight);
      if (auto* s = dynamic_cast<SequentialQuantizerImpl*>(wq.get())) {
        s->forward(qm->quant_weight());
      } else {
        std::dynamic_pointer_cast<TensorQuantizerImpl>(wq)->forward(qm->quant_weight());
      }
    }
  } catch (...) {
    abort_stats_collection(model);
    throw;
  }
  finish_stats_collection(model);
}

// With `from_weights_if_possible` (the max step's skip_forward_without_activation_calib), a
// model whose only quantizers to calibrate read layer weights is calibrated from the weights and
// forward_loop is not run: the same amax, without the passes over the data.
void max_calibrate(torch::nn::Module& model, const ForwardLoop& loop,
                   bool from_weights_if_possible) {
  if (!loop) {
    weight_only_calibrate(model, false);
    return;
  }
  if (from_weights_if_possible && calibrates_from_weights(model)) {
    std::cout << algorithms::max_calibration_from_weights_note() << std::endl;
    calibrate_from_weights(model);
    return;
  }
  collect_and_load(model, loop);
  weight_only_calibrate(model, true);
}

// ---------------------------------------------------------------------------------------------
// Layer solvers: passes and updates

// Observers on the layers for the duration of a pass, removed whatever happens.
class Observers {
 public:
  void add(QuantModule* m, QuantModule::InputObserver fn) {
    m->set_input_observer(std::move(fn));
    modules_.push_back(m);
  }
  ~Observers() {
    for (auto* m : modules_) m->set_input_observer(nullptr);
  }

 private:
  std::vector<QuantModule*> modules_;
};

// One pass of the loop with `observers` installed; with `calibrate_others`, every quantizer in
// calibration mode collects max statistics in the same pass.
void run_pass(torch::nn::Module& model, const ForwardLoop& loop,
              const std::vector<std::pair<QuantModule*, QuantModule::InputObserver>>& observers,
              bool calibrate_others) {
  Observers installed;
  for (const auto& [m, fn] : observers) installed.add(m, fn);
  if (calibrate_others) {
    collect_and_load(model, loop);
  } else {
    run_loop(model, loop);
  }
}

// Max-calibrates the weight quantizer stages from `first` on, on the current weight.
void recalibrate_weight(QuantModule& m, size_t first = 0) {
  at::NoGradGuard no_grad;
  at::Tensor x = m.quant_weight();
  const auto stages = slot_quantizers(m, QuantModule::kWeight);
  for (size_t i = 0; i < stages.size(); ++i) {
    TensorQuantizer q = stages[i];
    if (i >= first && q->is_enabled() && q->is_static() && q->calibrator()) {
      q->reset_amax();
      q->collect(x);
      q->load_calib_amax();
    }
    x = q->forward(x);
  }
}

// Replaces an amax whose shape may differ from the stored one.
void replace_amax(TensorQuantizerImpl& q, const at::Tensor& amax) {
  if (q.amax().has_value() && q.amax()->sizes() != amax.sizes()) q.reset_amax();
  q.set_amax(amax.detach().to(at::kFloat));
}

LayerState layer_state(const Linear& l) {
  LayerState s;
  if (auto* iq = tensor_quantizer(*l.module, QuantModule::kInput)) {
    s.input_pre_quant_scale = iq->pre_quant_scale();
  }
  if (auto* wq = tensor_quantizer(*l.module, QuantModule::kWeight)) s.weight_amax = wq->amax();
  return s;
}

// Writes a solver's update into the layer (Python: apply_update).
void apply_update(const Linear& l, const LayerUpdate& u) {
  at::NoGradGuard no_grad;
  auto* iq = tensor_quantizer(*l.module, QuantModule::kInput);
  auto* wq = tensor_quantizer(*l.module, QuantModule::kWeight);
  if (u.weight) l.module->weight.copy_(*u.weight);
  if (u.pre_quant_scale && iq) iq->set_pre_quant_scale(*u.pre_quant_scale);
  if (u.input_amax && iq && iq->is_enabled() && iq->is_static()) replace_amax(*iq, *u.input_amax);
  if (u.weight_amax && wq) replace_amax(*wq, *u.weight_amax);
  if (u.weight_zero_point && wq) wq->set_zero_point(*u.weight_zero_point);
  if (u.recalibrate_weight) recalibrate_weight(*l.module);
}

struct SolvedLayer {
  Linear layer;
  std::unique_ptr<LayerSolver> solver;
  bool input_quantized = false;
};

// The layer's input as its solver wants it in a pass (see SolverInput).
at::Tensor solver_input(const SolvedLayer& s, const at::Tensor& x) {
  auto* iq = tensor_quantizer(*s.layer.module, QuantModule::kInput);
  at::NoGradGuard no_grad;
  switch (s.solver->input_mode()) {
    case SolverInput::kFloat:
      return iq->forward(x);  // disabled: the pre_quant_scale only
    case SolverInput::kRunningAmax:
      if (!s.input_quantized) return iq->forward(x);
      if (iq->is_static()) {
        iq->collect(x);
        iq->load_calib_amax();
      }
      iq->enable();
      try {
        at::Tensor y = iq->forward(x);
        iq->disable();
        return y;
      } catch (...) {
        iq->disable();
        throw;
      }
    case SolverInput::kQuantized:
      return iq->forward(x);
  }
  return x;
}

// Feeds pass `pass` of the solvers in `layers` (all of them when `only` is empty).
void solver_pass(torch::nn::Module& model, const ForwardLoop& loop,
                 std::vector<SolvedLayer*> layers, int pass, bool calibrate_others) {
  std::vector<std::pair<QuantModule*, QuantModule::InputObserver>> observers;
  for (SolvedLayer* s : layers) {
    observers.emplace_back(s->layer.module, [s, pass](const at::Tensor& x) {
      s->solver->collect(pass, solver_input(*s, x));
    });
  }
  run_pass(model, loop, observers, calibrate_others);
  for (SolvedLayer* s : layers) s->solver->finish_pass(pass);
}

// Disables the weight and input quantizers of the searched layers (the layers compute in float)
// and restores them.
class QuantizersOff {
 public:
  explicit QuantizersOff(std::vector<SolvedLayer>& layers) : layers_(layers) {
    for (auto& s : layers_) {
      tensor_quantizer(*s.layer.module, QuantModule::kWeight)->disable();
      tensor_quantizer(*s.layer.module, QuantModule::kInput)->disable();
    }
  }
  ~QuantizersOff() {
    for (auto& s : layers_) {
      tensor_quantizer(*s.layer.module, QuantModule::kWeight)->enable();
      if (s.input_quantized) tensor_quantizer(*s.layer.module, QuantModule::kInput)->enable();
    }
  }

 private:
  std::vector<SolvedLayer>& layers_;
};

// Replaces every SequentialQuantizer weight by its first stage for the duration (Python:
// SequentialQuantizer.convert_to_single_quantizer).
class FirstStageOnly {
 public:
  explicit FirstStageOnly(torch::nn::Module& model) {
    for (const Node& node : named_modules(model)) {
      auto* qm = dynamic_cast<QuantModule*>(node.module);
      if (!qm || !qm->is_converted()) continue;
      for (size_t i = 0; i < 3; ++i) {
        const auto slot = static_cast<QuantModule::Slot>(i);
        const ModulePtr q = qm->quantizer(slot);
        if (auto* s = dynamic_cast<SequentialQuantizerImpl*>(q.get())) {
          saved_.push_back({qm, slot, q});
          qm->set_quantizer(slot, s->at(0).ptr());
        }
      }
    }
  }
  ~FirstStageOnly() {
    for (const auto& [qm, slot, q] : saved_) qm->set_quantizer(slot, q);
  }

 private:
  struct Saved {
    QuantModule* module;
    QuantModule::Slot slot;
    ModulePtr quantizer;
  };
  std::vector<Saved> saved_;
};

std::vector<SolvedLayer*> pointers(std::vector<SolvedLayer>& layers) {
  std::vector<SolvedLayer*> out;
  for (auto& s : layers) out.push_back(&s);
  return out;
}

// ---------------------------------------------------------------------------------------------
// SmoothQuant

void smoothquant(torch::nn::Module& model, const ForwardLoop& loop,
                 const algorithms::SmoothQuantCalibration& opts) {
  MOPT_CHECK_VALUE(static_cast<bool>(loop),
                   "smoothquant needs forward_loop: it smooths with activation statistics");
  std::vector<SolvedLayer> layers;
  for (const Linear& l : solvable_linears(model, "smoothquant")) {
    auto* iq = tensor_quantizer(*l.module, QuantModule::kInput);
    auto* wq = tensor_quantizer(*l.module, QuantModule::kWeight);
    if (!iq || !iq->is_enabled()) continue;
    if (auto reason = algorithms::smoothquant_skip_reason(l.name, &iq->core(),
                                                          wq ? &wq->core() : nullptr)) {
      warn(*reason);
      continue;
    }
    std::unique_ptr<LayerSolver> solver;
    if (opts.search) {
      solver = std::make_unique<algorithms::SmoothQuantLayer>(
          l.module->weight, iq->attribute_config(), wq->attribute_config(), *opts.search, l.name);
    } else {
      solver = std::make_unique<algorithms::SmoothQuantLayer>(l.module->weight, opts.alpha,
                                                              l.name);
    }
    layers.push_back({l, std::move(solver), true});
  }
  // The smoothed input quantizers stay out of the max pass: their amax comes from the
  // per-channel statistics. Disabled, a quantizer still applies an earlier pre_quant_scale.
  for (auto& s : layers) tensor_quantizer(*s.layer.module, QuantModule::kInput)->disable();
  try {
    solver_pass(model, loop, pointers(layers), 0, /*calibrate_others=*/true);
  } catch (...) {
    for (auto& s : layers) tensor_quantizer(*s.layer.module, QuantModule::kInput)->enable();
    throw;
  }
  for (auto& s : layers) tensor_quantizer(*s.layer.module, QuantModule::kInput)->enable();
  if (opts.search) {
    // the alpha search: the searched layers compute in float, as in the first pass
    std::vector<SolvedLayer*> searched;
    for (auto& s : layers) {
      if (s.solver->num_batches(0) > 0) searched.push_back(&s);
    }
    QuantizersOff off(layers);
    solver_pass(model, loop, searched, 1, /*calibrate_others=*/false);
  }
  for (auto& s : layers) {
    if (s.solver->num_batches(0) == 0) {
      warn("smoothquant: layer '" + s.layer.name + "' was not reached by forward_loop; it is "
           "not smoothed and its input quantizer stays uncalibrated");
      continue;
    }
    if (opts.search && s.solver->num_batches(1) == 0) {
      warn("smoothquant: layer '" + s.layer.name + "' was reached by the first call of "
           "forward_loop but not by the second (forward_loop must forward the same data each "
           "call); it is not smoothed and gets max calibration");
      auto* iq = tensor_quantizer(*s.layer.module, QuantModule::kInput);
      if (iq->is_static()) {
        const auto* sq = static_cast<const algorithms::SmoothQuantLayer*>(s.solver.get());
        replace_amax(*iq, sq->act_amax().amax());
      }
      recalibrate_weight(*s.layer.module);
      continue;
    }
    apply_update(s.layer, s.solver->solve(layer_state(s.layer)));
  }
  weight_only_calibrate(model, true);
}

// ---------------------------------------------------------------------------------------------
// AWQ

std::vector<QuantModule*> awq_lite(torch::nn::Module& model, const ForwardLoop& loop,
                                   const algorithms::AwqLiteOptions& opts) {
  std::vector<SolvedLayer> layers;
  for (const Linear& l : solvable_linears(model, "awq_lite")) {
    auto* wq = tensor_quantizer(*l.module, QuantModule::kWeight);
    auto* iq = tensor_quantizer(*l.module, QuantModule::kInput);
    if (!wq || !wq->is_enabled() || !iq) continue;
    const bool input_quantized = iq->is_enabled();
    if (input_quantized) {
      if (auto reason = algorithms::awq_lite_skip_reason(l.name, iq->core())) {
        warn(*reason);
        continue;
      }
    }
    std::unique_ptr<LayerSolver> solver;
    try {
      solver = std::make_unique<algorithms::AwqLiteLayer>(
          l.module->weight, wq->attribute_config(), opts.alpha_step, l.name);
    } catch (const c10::ValueError& e) {
      MOPT_CHECK_VALUE(false, "awq_lite: layer '", l.name, "': ", e.what_without_backtrace());
    }
    layers.push_back({l, std::move(solver), input_quantized});
  }
  if (layers.empty()) {
    max_calibrate(model, loop, /*from_weights_if_possible=*/false);
    return {};
  }
  std::vector<SolvedLayer*> searched;
  {
    QuantizersOff off(layers);
    solver_pass(model, loop, pointers(layers), 0, /*calibrate_others=*/true);
    for (auto& s : layers) {
      if (s.solver->num_batches(0) > 0) searched.push_back(&s);
    }
    solver_pass(model, loop, searched, 1, /*calibrate_others=*/false);
  }
  std::vector<QuantModule*> done;
  for (auto& s : layers) {
    auto* iq = tensor_quantizer(*s.layer.module, QuantModule::kInput);
    if (s.solver->num_batches(1) == 0) {
      if (s.solver->num_batches(0) == 0) {
        warn("awq_lite: layer '" + s.layer.name + "' was not reached by forward_loop; it gets "
             "max calibration of its weight only");
      } else {
        warn("awq_lite: layer '" + s.layer.name + "' was reached by the first call of "
             "forward_loop but not by the second (forward_loop must forward the same data each "
             "call); it gets max calibration");
        if (s.input_quantized && iq->is_static()) {
          const auto* lite = static_cast<const algorithms::AwqLiteLayer*>(s.solver.get());
          replace_amax(*iq, lite->act_amax().amax());
        }
      }
      recalibrate_weight(*s.layer.module);
      continue;
    }
    apply_update(s.layer, s.solver->solve(layer_state(s.layer)));
    done.push_back(s.layer.module);
  }
  return done;
}

std::vector<QuantModule*> awq_clip(torch::nn::Module& model, const ForwardLoop& loop,
                                   const algorithms::AwqClipOptions& opts) {
  std::vector<SolvedLayer> layers;
  for (const Linear& l : quantized_linears(model)) {
    auto* wq = tensor_quantizer(*l.module, QuantModule::kWeight);
    auto* iq = tensor_quantizer(*l.module, QuantModule::kInput);
    if (!wq || !wq->is_enabled() || !wq->block_sizes() || !iq) continue;
    if (auto reason = algorithms::awq_clip_skip_reason(l.name, wq->core())) {
      warn(*reason);
      continue;
    }
    {
      at::NoGradGuard no_grad;
      wq->reset_amax();
      wq->collect(l.module->weight);
      wq->load_calib_amax();
    }
    std::unique_ptr<LayerSolver> solver;
    try {
      solver = std::make_unique<algorithms::AwqClipLayer>(
          l.module->weight, *wq->amax(), wq->attribute_config(), opts, l.name);
    } catch (const c10::NotImplementedError& e) {
      warn("awq_clip: layer '" + l.name + "' is not clipped (" +
           e.what_without_backtrace() + "); it keeps max calibration");
      continue;
    }
    const bool input_quantized = iq->is_enabled();
    if (input_quantized && iq->is_static()) iq->reset_amax();  // recalibrated batch by batch
    iq->disable_calib();
    iq->enable_quant();
    layers.push_back({l, std::move(solver), input_quantized});
  }
  if (layers.empty()) {
    max_calibrate(model, loop, /*from_weights_if_possible=*/false);
    return {};
  }
  {
    QuantizersOff off(layers);
    solver_pass(model, loop, pointers(layers), 0, /*calibrate_others=*/true);
  }
  std::vector<QuantModule*> done;
  for (auto& s : layers) {
    if (s.solver->num_batches(0) == 0) {
      warn("awq_clip: layer '" + s.layer.name + "' was not reached by forward_loop; its weight "
           "keeps max calibration");
      continue;
    }
    apply_update(s.layer, s.solver->solve(layer_state(s.layer)));
    done.push_back(s.layer.module);
  }
  return done;
}

void awq(torch::nn::Module& model, const ForwardLoop& loop, const std::string& method,
         const algorithms::AwqCalibration& opts) {
  if (!loop) {
    warn(method + " needs forward_loop for activation statistics; without it only the weights "
         "get max calibration");
    weight_only_calibrate(model, false);
    return;
  }
  std::vector<QuantModule*> searched;
  {
    FirstStageOnly first(model);
    if (opts.lite) searched = awq_lite(model, loop, *opts.lite);
    if (opts.clip) {
      for (QuantModule* m : awq_clip(model, loop, *opts.clip)) {
        if (std::find(searched.begin(), searched.end(), m) == searched.end()) searched.push_back(m);
      }
    }
  }
  // Later SequentialQuantizer stages (W4A8's FP8) see the searched first stage's output.
  for (QuantModule* m : searched) {
    if (dynamic_cast<SequentialQuantizerImpl*>(m->quantizer(QuantModule::kWeight).get())) {
      recalibrate_weight(*m, 1);
    }
  }
  weight_only_calibrate(model, true);
}

// ---------------------------------------------------------------------------------------------
// GPTQ

void gptq(torch::nn::Module& model, const ForwardLoop& loop,
          const algorithms::GptqCalibration& opts) {
  MOPT_CHECK_VALUE(static_cast<bool>(loop),
                   "gptq needs forward_loop: its Hessians come from calibration activations");
  MOPT_CHECK_IMPLEMENTED(opts.layerwise != true, "gptq layerwise=True: a LibTorch module declares "
                         "no decoder layer list, so the C++ API runs GPTQ in one pass over the "
                         "model (layerwise=None or False)");
  // Targets, checked before anything changes.
  std::vector<SolvedLayer> layers;
  std::unordered_set<const TensorQuantizerImpl*> weight_qs;
  for (const Linear& l : solvable_linears(model, "gptq")) {
    const ModulePtr wqm = l.module->quantizer(QuantModule::kWeight);
    auto* wq = dynamic_cast<TensorQuantizerImpl*>(wqm.get());
    auto* seq = dynamic_cast<SequentialQuantizerImpl*>(wqm.get());
    if (seq ? !seq->is_enabled() : (!wq || !wq->is_enabled())) continue;
    algorithms::gptq_check_layer(l.name, wq ? &wq->core() : nullptr,
                                 wq && wq->pre_quant_scale().has_value());
    layers.push_back({l,
                      std::make_unique<algorithms::GptqLayer>(l.module->weight,
                                                              wq->attribute_config(), opts.solver,
                                                              l.name),
                      true});
    weight_qs.insert(wq);
  }
  std::vector<std::string> others;
  for (const Node& node : named_modules(model)) {
    auto* qm = dynamic_cast<QuantModule*>(node.module);
    if (!qm || !qm->is_converted() || dynamic_cast<QuantLinearImpl*>(node.module)) continue;
    const auto stages = slot_quantizers(*qm, QuantModule::kWeight);
    bool enabled = false;
    for (const auto& q : stages) enabled = enabled || q->is_enabled();
    if (enabled) others.push_back("'" + node.name + "'");
  }
  if (!others.empty()) {
    std::string list;
    for (const auto& o : others) list += (list.empty() ? "" : ", ") + o;
    warn("gptq handles quantized nn.Linear layers; these layers get max calibration of their "
         "weights instead: [" + list + "]");
  }
  // Pass 1 (weights off): the activation quantizers; pass 2: the Hessians of the input
  // quantizers' outputs.
  std::vector<TensorQuantizerImpl*> disabled;
  for (const auto& s : layers) {
    auto* wq = tensor_quantizer(*s.layer.module, QuantModule::kWeight);
    disabled.push_back(wq);
  }
  std::vector<bool> was_disabled;
  for (auto* q : disabled) {
    was_disabled.push_back(!q->is_enabled());
    q->disable();
  }
  auto restore = [&] {
    for (size_t i = 0; i < disabled.size(); ++i) {
      if (was_disabled[i]) disabled[i]->disable();
      else disabled[i]->enable();
    }
  };
  try {
    std::vector<TensorQuantizerImpl*> to_calibrate;
    for (auto* q : all_quantizers(model)) {
      if (!weight_qs.count(q) && needs_calibration(*q)) to_calibrate.push_back(q);
    }
    if (!to_calibrate.empty()) {
      for (auto* q : to_calibrate) {
        q->disable_quant();
        q->enable_calib();
      }
      try {
        run_loop(model, loop);
      } catch (...) {
        for (auto* q : to_calibrate) {
          q->load_calib_amax();
          q->disable_calib();
          q->enable_quant();
        }
        throw;
      }
      for (auto* q : to_calibrate) {
        q->load_calib_amax();
        q->disable_calib();
        q->enable_quant();
      }
    }
    if (!layers.empty()) solver_pass(model, loop, pointers(layers), 0, false);
  } catch (...) {
    restore();
    throw;
  }
  restore();
  for (auto& s : layers) {
    if (s.solver->num_batches(0) == 0) {
      warn("gptq: layer '" + s.layer.name + "' was not reached by forward_loop; its weight gets "
           "max calibration (round to nearest) instead of GPTQ");
      recalibrate_weight(*s.layer.module);
      continue;
    }
    apply_update(s.layer, s.solver->solve(layer_state(s.layer)));
  }
  weight_only_calibrate(model, true);
}

// ---------------------------------------------------------------------------------------------
// MSE and histogram searches

bool weight_quantizer_name(const std::string& name) {
  size_t start = 0;
  while (start <= name.size()) {
    const size_t dot = name.find('.', start);
    const std::string part = name.substr(start, dot == std::string::npos ? std::string::npos
                                                                         : dot - start);
    if (part == "weight_quantizer") return true;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return false;
}

// Swaps calibrators in and puts the originals back on scope exit.
class CalibratorSwap {
 public:
  void swap(TensorQuantizerImpl* q, std::shared_ptr<Calibrator> c) {
    saved_.emplace_back(q, q->core().calibrator());
    q->core().set_calibrator(std::move(c));
  }
  ~CalibratorSwap() {
    for (auto& [q, c] : saved_) q->core().set_calibrator(c);
  }

 private:
  std::vector<std::pair<TensorQuantizerImpl*, std::shared_ptr<Calibrator>>> saved_;
};

void histogram_calibrate(torch::nn::Module& model, const ForwardLoop& loop,
                         const std::string& algorithm,
                         const algorithms::HistogramCalibration& opts) {
  std::vector<TensorQuantizerImpl*> targets;
  for (auto& [name, q] : named_quantizers(model)) {
    if (!needs_calibration(*q)) continue;
    const bool configured = dynamic_cast<HistogramCalibrator*>(q->calibrator()) != nullptr;
    if (weight_quantizer_name(name) && !configured) continue;  // weights keep max calibration
    const FormatFamilyInfo& f = *q->core().format().info;
    if (!f.histogram_calibration) continue;  // NVFP4/MX/NF4 keep a max-calibrated tensor scale
    MOPT_CHECK_IMPLEMENTED(opts.method != HistogramMethod::kEntropy || f.entropy_calibration,
                           "algorithm 'entropy' needs integer quantizers; '", name,
                           "' uses num_bits ", q->core().format().name,
                           " (use 'percentile' or 'histogram_mse')");
    targets.push_back(q.get());
  }
  // Built before any quantizer changes, so bad options leave the model untouched.
  std::vector<std::shared_ptr<Calibrator>> calibrators;
  for (auto* q : targets) {
    auto c = std::make_shared<HistogramCalibrator>(q->num_bits(), q->calibrator()->axis(),
                                                   q->is_unsigned(), opts.num_bins,
                                                   opts.skip_zeros);
    c->set_default_method(opts.method, opts.amax);
    calibrators.push_back(std::move(c));
  }
  CalibratorSwap swap;
  for (size_t i = 0; i < targets.size(); ++i) swap.swap(targets[i], calibrators[i]);
  max_calibrate(model, loop, /*from_weights_if_possible=*/false);
}

// Activation quantizers take a percentile of their per-step amaxes; weights keep max calibration.
void step_percentile_calibrate(torch::nn::Module& model, const ForwardLoop& loop,
                               const algorithms::StepPercentileCalibration& opts) {
  std::vector<TensorQuantizerImpl*> targets;
  for (auto& [name, q] : named_quantizers(model)) {
    if (!needs_calibration(*q) || weight_quantizer_name(name)) continue;
    if (!q->core().format().info->histogram_calibration) continue;  // block scales keep max
    targets.push_back(q.get());
  }
  std::vector<std::shared_ptr<Calibrator>> calibrators;
  for (auto* q : targets) {
    calibrators.push_back(std::make_shared<StepAmaxCalibrator>(
        q->num_bits().bits, q->calibrator()->axis(), q->is_unsigned(), opts.num_steps,
        opts.percentile, opts.collect));
  }
  CalibratorSwap swap;
  for (size_t i = 0; i < targets.size(); ++i) swap.swap(targets[i], calibrators[i]);
  max_calibrate(model, loop, /*from_weights_if_possible=*/false);
}

void mse_calibrate(torch::nn::Module& model, const ForwardLoop& loop,
                   const algorithms::MseCalibration& opts) {
  max_calibrate(model, loop, /*from_weights_if_possible=*/false);
  std::vector<TensorQuantizerImpl*> targets;
  std::vector<TensorQuantizerImpl*> statics;
  for (auto* q : all_quantizers(model)) {
    if (!needs_calibration(*q)) continue;
    statics.push_back(q);
    const auto amax = q->amax();
    // A NaN/Inf amax is left for calibrate's check, which names the layer.
    if (!amax || !q->core().format().info->histogram_calibration) continue;
    if (!at::isfinite(*amax).all().item<bool>() || at::lt(*amax, 0).any().item<bool>()) continue;
    targets.push_back(q);
  }
  std::vector<std::shared_ptr<Calibrator>> calibrators;
  for (auto* q : targets) {
    calibrators.push_back(q->core().make_mse_calibrator(*q->amax(), opts.num_steps,
                                                        opts.start_multiplier,
                                                        opts.stop_multiplier));
  }
  CalibratorSwap swap;
  for (size_t i = 0; i < targets.size(); ++i) swap.swap(targets[i], calibrators[i]);
  std::vector<QuantizerFlags> flags;
  for (auto* q : statics) flags.push_back(q->core().flags());
  {
    // As in max calibration, the forward runs unquantized through the static quantizers.
    for (auto* q : statics) q->disable_quant();
    for (auto* q : targets) q->enable_calib();
    try {
      if (loop) run_loop(model, loop);
    } catch (...) {
      for (size_t i = 0; i < statics.size(); ++i) statics[i]->core().set_flags(flags[i]);
      throw;
    }
    for (size_t i = 0; i < statics.size(); ++i) statics[i]->core().set_flags(flags[i]);
  }
  // Weights of layers the loop never reached are searched on the weight itself.
  for (const Node& node : named_modules(model)) {
    auto* qm = dynamic_cast<QuantModule*>(node.module);
    if (!qm || !qm->is_converted()) continue;
    const auto stages = slot_quantizers(*qm, QuantModule::kWeight);
    bool pending = false;
    for (const auto& q : stages) {
      for (size_t i = 0; i < targets.size(); ++i) {
        pending = pending || (targets[i] == q.get() && !calibrators[i]->has_data());
      }
    }
    if (!pending) continue;
    at::NoGradGuard no_grad;
    at::Tensor x = qm->quant_weight();
    for (TensorQuantizer q : stages) {
      for (size_t i = 0; i < targets.size(); ++i) {
        if (targets[i] == q.get() && !calibrators[i]->has_data()) q->collect(x);
      }
      x = q->forward(x);
    }
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto amax = targets[i]->core().compute_amax();
    if (amax) targets[i]->set_amax(amax->to(targets[i]->amax()->device()));
  }
}

// ---------------------------------------------------------------------------------------------

void check_amax(torch::nn::Module& model) {
  std::unordered_map<std::string, torch::nn::Module*> by_name;
  for (const Node& node : named_modules(model)) by_name.emplace(node.name, node.module);
  std::vector<std::string> bad;
  for (auto& [name, q] : named_quantizers(model)) {
    const auto amax = q->amax();
    if (!amax.has_value() || amax->is_meta()) continue;
    const bool finite = at::isfinite(*amax).all().item<bool>();
    const bool negative = at::lt(*amax, 0).any().item<bool>();
    if (finite && !negative) continue;
    std::string module_name =
        name.find('.') == std::string::npos ? "" : name.substr(0, name.rfind('.'));
    // A quantizer inside a SequentialQuantizer: name the layer that owns it.
    while (!module_name.empty() && !dynamic_cast<QuantModule*>(by_name[module_name]) &&
           module_name.find('.') != std::string::npos) {
      module_name = module_name.substr(0, module_name.rfind('.'));
    }
    torch::nn::Module* owner = module_name.empty() ? &model : by_name[module_name];
    const auto* qm = dynamic_cast<QuantModule*>(owner);
    const std::string type = qm ? qm->quant_class_name() : owner->name();
    bad.push_back("quantizer '" + name + "' of module '" + module_name + "' (" + type +
                  "): amax=" + q->short_amax());
  }
  if (bad.empty()) return;
  std::string lines;
  for (const auto& b : bad) lines += "\n  " + b;
  MOPT_CHECK_STATE(false, "calibration produced invalid amax (NaN, Inf or negative) - the data "
                   "reaching these layers holds NaN/Inf:", lines);
}

void run_step(torch::nn::Module& model, const ForwardLoop& loop,
              const algorithms::CalibrationStep& step);

// Learned scales (Python: algorithms/lsq.py): the eligible weight quantizers (stages) are chosen
// by the shared rules before scale_algorithm runs, so a refused model is left unchanged; after
// it, each one with an amax gets a pre and a post amax, the learned ones as parameters.
void lsq_calibrate(torch::nn::Module& model, const ForwardLoop& loop,
                   const algorithms::LsqCalibration& opts) {
  std::vector<TensorQuantizer> stages;
  std::vector<algorithms::LsqCandidate> candidates;
  for (const Node& node : named_modules(model)) {
    auto* qm = dynamic_cast<QuantModule*>(node.module);
    if (!qm || !qm->is_converted() || !qm->quant_weight().defined()) continue;
    const std::vector<TensorQuantizer> qs = slot_quantizers(*qm, QuantModule::kWeight);
    for (size_t i = 0; i < qs.size(); ++i) {
      stages.push_back(qs[i]);
      candidates.push_back({node.name + ".weight_quantizer" +
                                (qs.size() > 1 ? "." + std::to_string(i) : std::string()),
                            &qs[i]->core()});
    }
  }
  const std::vector<size_t> targets = algorithms::lsq_targets(candidates);
  run_step(model, loop, algorithms::lsq_scale_step(opts));
  const opt::LsqState state{opts.learn_pre, opts.learn_post, opts.tied_amax};
  for (size_t i : targets) {
    if (stages[i]->amax()) stages[i]->enable_lsq(state);
  }
}

void run_step(torch::nn::Module& model, const ForwardLoop& loop,
              const algorithms::CalibrationStep& step) {
  std::visit(
      [&](const auto& o) {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, algorithms::MaxCalibration>) {
          max_calibrate(model, loop, o.skip_forward_without_activation_calib);
        } else if constexpr (std::is_same_v<T, algorithms::SmoothQuantCalibration>) {
          smoothquant(model, loop, o);
        } else if constexpr (std::is_same_v<T, algorithms::AwqCalibration>) {
          awq(model, loop, step.method, o);
        } else if constexpr (std::is_same_v<T, algorithms::GptqCalibration>) {
          gptq(model, loop, o);
        } else if constexpr (std::is_same_v<T, algorithms::MseCalibration>) {
          mse_calibrate(model, loop, o);
        } else if constexpr (std::is_same_v<T, algorithms::HistogramCalibration>) {
          histogram_calibrate(model, loop, step.method, o);
        } else if constexpr (std::is_same_v<T, algorithms::StepPercentileCalibration>) {
          step_percentile_calibrate(model, loop, o);
        } else if constexpr (std::is_same_v<T, algorithms::LsqCalibration>) {
          lsq_calibrate(model, loop, o);
        } else {
          MOPT_CHECK_IMPLEMENTED(false, "calibration algorithm '", step.method,
                                 "' is registered by another front end (Python), not in C++");
        }
      },
      step.options);
}

}  // namespace

void calibrate(torch::nn::Module& model, const std::vector<algorithms::CalibrationStep>& steps,
               const ForwardLoop& forward_loop) {
  const bool was_training = model.is_training();
  model.eval();
  try {
    for (const auto& step : steps) run_step(model, forward_loop, step);
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  check_amax(model);
}

}  // namespace mopt
