// SmoothQuant (Xiao et al., 2023; SPEC §5): per-input-channel scales that move activation
// outliers of a linear layer into its weight before both are quantized to 8-bit integers. The
// scale is folded: the input quantizer multiplies by it (pre_quant_scale) and the weight columns
// are divided by it, so the float layer computes the same function.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <optional>
#include <string>

#include "mopt/algorithms/layer_solver.h"
#include "mopt/quant/quantizer_core.h"

namespace mopt::algorithms {

/// s = clamp(weight_max^(1-alpha) / act_amax^alpha, 1e-4, 1e4) per input channel in fp32, with
/// s = 1 where act_amax <= 2^-31 (a channel that never fires). Both inputs are [in].
at::Tensor smoothquant_scale(const at::Tensor& act_amax, const at::Tensor& weight_max,
                             double alpha);

/// A linear layer with a per-input-channel pre_quant_scale p folded in: the input is multiplied
/// by p and the weight columns divided by it.
struct SmoothedLinear {
  at::Tensor pre_quant_scale;  // [in] fp32, the input quantizer's new pre_quant_scale
  at::Tensor weight;           // [out, in] W[:, j] / p_j in the weight's dtype
  at::Tensor input_amax;       // [] fp32, max_j act_amax_j * p_j: the per-tensor input amax
};

/// Folds `pre_quant_scale` (p > 0, [in]) into `weight` ([out, in]); act_amax [in] is the
/// per-channel max |x| of the inputs the layer saw. A `prior_pre_quant_scale` already applied to
/// those inputs (x holds x_raw * prior) is composed in: the returned scale is prior * p.
SmoothedLinear fold_pre_quant_scale(const at::Tensor& weight, const at::Tensor& pre_quant_scale,
                                    const at::Tensor& act_amax,
                                    const c10::optional<at::Tensor>& prior_pre_quant_scale = {});

/// Why SmoothQuant leaves the layer `name` alone (the warning to give), or nullopt when it can
/// smooth it: 8-bit integer input and weight quantizers, the input one static per tensor or
/// dynamic (per token: its scales follow the smoothed inputs). A null quantizer stands for a
/// multi-stage (Sequential) one.
std::optional<std::string> smoothquant_skip_reason(const std::string& name,
                                                   const QuantizerCore* input_quantizer,
                                                   const QuantizerCore* weight_quantizer);

/// SmoothQuant of one linear layer: streams its inputs (per-channel running max |x|, memory [in])
/// and computes the smoothing. `name` (the layer's name) appears in every error message.
class SmoothQuantLayer : public LayerSolver {
 public:
  /// weight: [out, in]; alpha in [0, 1] (1 moves all the difficulty to the weight).
  SmoothQuantLayer(at::Tensor weight, double alpha = 1.0, std::string name = "");

  /// Folds one batch of inputs [..., in] in (the input as the weight sees it).
  void collect(const at::Tensor& x);

  // LayerSolver: one pass of float inputs; the update folds the scale into the weight and the
  // input quantizer (pre_quant_scale, per-tensor amax) and recalibrates the weight.
  SolverInput input_mode() const override { return SolverInput::kFloat; }
  void collect(int, const at::Tensor& x) override { collect(x); }
  void finish_pass(int pass) override;
  int64_t num_batches(int) const override { return num_batches_; }
  LayerUpdate solve(const LayerState& state) override;
  /// Number of non-empty batches collected.
  int64_t num_batches() const { return num_batches_; }
  /// Per-channel max |x| so far ([in] fp32); undefined before the first batch.
  const at::Tensor& act_amax() const { return act_amax_; }
  /// max over output rows of |W| per input channel ([in] fp32).
  at::Tensor weight_max() const;
  /// Per-channel scales s (smoothquant_scale).
  at::Tensor scale() const;
  /// The smoothing to apply: pre_quant_scale = prior * s, W[:, j] / s_j, input amax. RuntimeError
  /// naming the layer when no batch was collected or the statistics hold NaN/Inf.
  SmoothedLinear compute(const c10::optional<at::Tensor>& prior_pre_quant_scale = {}) const;

  double alpha() const { return alpha_; }
  const std::string& name() const override { return name_; }

 private:
  void check_ready() const;

  at::Tensor weight_;
  double alpha_;
  std::string name_;
  at::Tensor act_amax_;
  int64_t num_batches_ = 0;
};

}  // namespace mopt::algorithms
