// The layer-solver interface every per-layer calibration algorithm implements (SmoothQuant, AWQ
// lite, AWQ clip, GPTQ): a front end's layer-wise driver feeds each solver the inputs of its
// linear layer over one or more passes of the calibration data (collect), ends each pass
// (finish_pass, which combines the ranks' statistics inside a CalibrationGroupScope), and applies
// the LayerUpdate the solver returns. The drivers (Python's mopt.quantization.algorithms and
// C++'s mopt::calibrate) decide only what runs when; the statistics and the math are here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mopt::algorithms {

/// What a solver changes in its linear layer; unset fields stay as they are.
struct LayerUpdate {
  c10::optional<at::Tensor> weight;           // the new weight, in the layer's dtype
  c10::optional<at::Tensor> pre_quant_scale;  // the input quantizer's new pre_quant_scale
  c10::optional<at::Tensor> input_amax;       // the input quantizer's new per-tensor amax
  c10::optional<at::Tensor> weight_amax;      // the weight quantizer's new amax
  c10::optional<at::Tensor> weight_zero_point;  // with weight_amax: an asymmetric one's zero points
  bool recalibrate_weight = false;            // max-calibrate the weight quantizer afterwards
};

/// The layer's quantizer state a solver reads when it solves.
struct LayerState {
  c10::optional<at::Tensor> input_pre_quant_scale;  // the input quantizer's pre_quant_scale
  c10::optional<at::Tensor> weight_amax;            // the weight quantizer's amax
};

/// How a driver feeds a layer's input to the solver in a pass.
enum class SolverInput {
  kFloat,      // the input as the float layer multiplies it: the layer's quantizers are off,
               // so only an existing pre_quant_scale applies (SmoothQuant, AWQ lite)
  kRunningAmax,  // quantized by the input quantizer with the amax it calibrated so far on this
                 // very pass, while the weight quantizer is off (AWQ clip, as the reference)
  kQuantized,  // the input quantizer's output after activation calibration, weight quantizer
               // off (GPTQ)
};

/// One linear layer's calibration solver.
class LayerSolver {
 public:
  virtual ~LayerSolver() = default;
  /// The layer's name, used in every message.
  virtual const std::string& name() const = 0;
  /// Passes over the calibration data the solver needs.
  virtual int num_passes() const { return 1; }
  /// How the layer's input reaches collect().
  virtual SolverInput input_mode() const = 0;
  /// Folds one batch of the layer's input ([..., in_features]) into pass `pass`.
  virtual void collect(int pass, const at::Tensor& x) = 0;
  /// Ends pass `pass`: inside a CalibrationGroupScope the ranks' statistics are combined; a
  /// pass that saw data is checked (RuntimeError naming the layer for NaN/Inf).
  virtual void finish_pass(int pass) = 0;
  /// Non-empty batches pass `pass` saw (over every rank, after finish_pass).
  virtual int64_t num_batches(int pass) const = 0;
  /// The update of the layer from its current quantizer state. RuntimeError naming the layer
  /// when a pass saw no data.
  virtual LayerUpdate solve(const LayerState& state) = 0;
};

/// For layers given by name and weight, in model order: for each layer whose weight storage is
/// shared with another layer's (tied weights), the reason `algorithm` must not solve it; nullopt
/// for the others. Algorithms that scale or update weights (SmoothQuant, AWQ, GPTQ) would apply
/// the change once per layer to the one shared tensor; every layer of a tie group is skipped.
std::vector<std::optional<std::string>> tied_weight_skip_reasons(
    const std::string& algorithm, const std::vector<std::string>& names,
    const std::vector<at::Tensor>& weights);

}  // namespace mopt::algorithms
